/**
 * Unit tests of the REST client, run with node's test runner against a small
 * HTTP server on 127.0.0.1 (`npm test`).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';

import { ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  BackupClient,
  apiUrl,
  describeError,
  errorMessage,
  formatBytes,
  isFinished,
  restoreBody
} from '../client';

describe('apiUrl', () => {
  test('joins base URL, API path and parts', () => {
    assert.equal(
      apiUrl('http://localhost:8888/', 'status'),
      'http://localhost:8888/ailab/backup/status'
    );
    assert.equal(
      apiUrl('http://h/user/me/', 'jobs', 'j1'),
      'http://h/user/me/ailab/backup/jobs/j1'
    );
    assert.equal(apiUrl('/lab-base/'), '/lab-base/ailab/backup');
  });

  test('encodes each part', () => {
    assert.equal(
      apiUrl('http://h/', 'a b/c', 'download'),
      'http://h/ailab/backup/a%20b%2Fc/download'
    );
  });

  test('download URL', () => {
    const client = new BackupClient(
      ServerConnection.makeSettings({ baseUrl: 'http://h:1/base/' })
    );
    assert.equal(
      client.downloadUrl('20260101T000000Z'),
      'http://h:1/base/ailab/backup/20260101T000000Z/download'
    );
  });
});

describe('errorMessage', () => {
  test('takes the server message', () => {
    assert.equal(
      errorMessage(409, 'Conflict', '{"message": "A job runs", "job_id": "x"}'),
      'A job runs'
    );
  });

  test('falls back to error or reason', () => {
    assert.equal(
      errorMessage(400, 'Bad', '{"error": "bad archive"}'),
      'bad archive'
    );
    assert.equal(errorMessage(403, 'Forbidden', '{"reason": "XSRF"}'), 'XSRF');
  });

  test('plain text body', () => {
    assert.equal(
      errorMessage(502, 'Bad Gateway', 'proxy down\n'),
      'proxy down'
    );
  });

  test('HTML page or empty body gives the status', () => {
    assert.equal(
      errorMessage(
        500,
        'Internal Server Error',
        '<html><body>boom</body></html>'
      ),
      'Request failed: 500 Internal Server Error'
    );
    assert.equal(
      errorMessage(404, 'Not Found', ''),
      'Request failed: 404 Not Found'
    );
    assert.equal(
      errorMessage(404, 'Not Found', '{"message": ""}'),
      'Request failed: 404 Not Found'
    );
    assert.equal(
      errorMessage(413, '', ''),
      'The file is too large for the server.'
    );
  });
});

describe('helpers', () => {
  test('formatBytes', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1536), '1.5 KB');
    assert.equal(formatBytes(5 * 1024 ** 3), '5.0 GB');
    assert.equal(formatBytes(150 * 1024 ** 2), '150 MB');
    assert.equal(formatBytes(undefined), '–');
  });

  test('isFinished', () => {
    const job = (state: any) => ({ state }) as any;
    assert.equal(isFinished(job('running')), false);
    assert.equal(isFinished(job('queued')), false);
    assert.equal(isFinished(job('succeeded')), true);
    assert.equal(isFinished(job('failed')), true);
  });
});

describe('restoreBody', () => {
  test('mode only, paths when chosen, dry_run for a preview', () => {
    assert.deepEqual(restoreBody('merge', null, false), { mode: 'merge' });
    assert.deepEqual(restoreBody('replace', undefined, true), {
      mode: 'replace',
      dry_run: true
    });
    assert.deepEqual(restoreBody('replace', ['a/b', 'c.ipynb'], false), {
      mode: 'replace',
      paths: ['a/b', 'c.ipynb']
    });
  });

  test('an empty choice is refused (the server would restore everything)', () => {
    assert.throws(() => restoreBody('merge', [], false), /at least one/);
  });
});

interface ISeen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

describe('BackupClient against a fake server', () => {
  let server: http.Server;
  let client: BackupClient;
  const seen: ISeen[] = [];
  let undoCalls = 0;
  let schedule: Record<string, unknown> = {
    spec: 'off',
    enabled: false,
    last: {
      outcome: 'failed',
      time: '2026-01-01T00:00:00Z',
      error: 'disk full'
    },
    next: null,
    warning: 'The last scheduled backup failed: disk full'
  };
  const lastBody = () => JSON.parse(seen[seen.length - 1].body.toString());
  let settings: Record<string, unknown> = {
    helper_image: '',
    excludes: [],
    keep_last: 0,
    schedule: 'off',
    kept: [],
    configured: {},
    helper_images: [
      { name: '', present: true },
      { name: 'ubuntu', present: true }
    ]
  };

  before(async () => {
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', c => chunks.push(c));
      req.on('end', () => {
        const url = (req.url ?? '').replace(/\?\d+$/, ''); // cache buster
        seen.push({
          method: req.method ?? '',
          url,
          headers: req.headers,
          body: Buffer.concat(chunks)
        });
        const send = (status: number, data?: unknown) => {
          res.writeHead(status, { 'Content-Type': 'application/json' });
          res.end(data === undefined ? '' : JSON.stringify(data));
        };
        const key = `${req.method} ${url}`;
        switch (key) {
          case 'GET /base/ailab/backup':
            return send(200, { backups: [{ id: 'b1', label: 'x' }] });
          case 'POST /base/ailab/backup':
            return send(409, {
              message: 'A backup is already running.',
              job_id: 'j9'
            });
          case 'POST /base/ailab/backup/b1/restore': {
            const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
            if (body.dry_run) {
              return body.paths?.includes('nope')
                ? send(400, { message: "'nope' is not in this backup." })
                : send(200, {
                    backup_id: 'b1',
                    mode: body.mode,
                    paths: body.paths ?? null,
                    added: [{ path: 'a.txt', type: 'file', size: 3 }],
                    overwritten: [
                      {
                        path: 'n.ipynb',
                        type: 'file',
                        size: 10,
                        current_size: 12,
                        notebook: {
                          cells_added: 0,
                          cells_removed: 1,
                          cells_changed: 0
                        }
                      }
                    ],
                    removed:
                      body.mode === 'replace'
                        ? [{ path: 'stray', type: 'file', size: 1 }]
                        : [],
                    unchanged: { count: 4, bytes: 100 }
                  });
            }
            return send(202, {
              job: { id: 'j2', kind: 'restore', state: 'queued' }
            });
          }
          case 'POST /base/ailab/backup/b2/restore':
            // An old server's plan without some lists.
            return send(200, { backup_id: 'b2', mode: 'merge', added: [] });
          case 'POST /base/ailab/backup/undo':
            undoCalls++;
            return undoCalls === 1
              ? send(202, {
                  job: { id: 'j3', kind: 'restore', state: 'queued' }
                })
              : send(404, {
                  message:
                    'There is no restore to undo: no safety backup was found.'
                });
          case 'GET /base/ailab/backup/schedule':
            return send(200, schedule);
          case 'PUT /base/ailab/backup/schedule': {
            const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
            if (!/^(off|every \d+[hm]|daily \d\d:\d\d)$/.test(body.spec)) {
              return send(400, {
                message: `Unknown schedule '${body.spec}': use 'every 6h'.`
              });
            }
            schedule = {
              ...schedule,
              spec: body.spec,
              enabled: body.spec !== 'off',
              next: body.spec === 'off' ? null : '2026-01-01T06:00:00Z'
            };
            return send(200, schedule);
          }
          case 'GET /base/ailab/backup/settings':
            return send(200, settings);
          case 'PUT /base/ailab/backup/settings': {
            const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
            if ('helper_image' in body && body.helper_image !== 'ubuntu') {
              return send(400, {
                message: `The image '${body.helper_image}' is not offered.`
              });
            }
            settings = { ...settings, ...body, kept: Object.keys(body) };
            return send(200, settings);
          }
          case 'GET /base/ailab/backup/changes':
            return send(200, { token: `t${seen.length}`, job: null });
          case 'GET /base/ailab/backup/jobs/j2':
            return send(200, {
              id: 'j2',
              state: 'succeeded',
              result: { hint: 'Restart' }
            });
          case 'DELETE /base/ailab/backup/b1':
            res.writeHead(204);
            return res.end();
          case 'POST /base/ailab/backup/upload':
            return req.headers['content-length'] === '0'
              ? send(400, { message: 'Empty archive.' })
              : send(201, { id: 'up1', label: '' });
          case 'GET /base/ailab/backup/status':
            res.writeHead(500, { 'Content-Type': 'text/html' });
            return res.end('<html>Traceback</html>');
          default:
            return send(404, { message: `No route ${key}` });
        }
      });
    });
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    client = new BackupClient(
      ServerConnection.makeSettings({
        baseUrl: `http://127.0.0.1:${port}/base/`,
        token: 'secret'
      })
    );
  });

  after(() => {
    server.close();
  });

  test('lists backups with the token header', async () => {
    const backups = await client.listBackups();
    assert.deepEqual(backups, [{ id: 'b1', label: 'x' }]);
    const req = seen[seen.length - 1];
    assert.equal(req.method, 'GET');
    assert.equal(req.headers['authorization'], 'token secret');
  });

  test('409 gives ApiError with message and job id', async () => {
    await assert.rejects(client.createBackup('my label'), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 409);
      assert.equal(e.message, 'A backup is already running.');
      assert.equal(e.jobId, 'j9');
      assert.equal(describeError(e), 'A backup is already running.');
      return true;
    });
    const req = seen[seen.length - 1];
    assert.deepEqual(JSON.parse(req.body.toString()), { label: 'my label' });
  });

  test('restore posts the mode and returns the job', async () => {
    const job = await client.restoreBackup('b1', 'replace');
    assert.equal(job.id, 'j2');
    assert.deepEqual(JSON.parse(seen[seen.length - 1].body.toString()), {
      mode: 'replace'
    });
    const done = await client.getJob('j2');
    assert.equal(done.result?.hint, 'Restart');
  });

  test('restore of chosen paths sends them', async () => {
    const job = await client.restoreBackup('b1', 'merge', {
      paths: ['private', 'démo/x.ipynb']
    });
    assert.equal(job.id, 'j2');
    assert.deepEqual(lastBody(), {
      mode: 'merge',
      paths: ['private', 'démo/x.ipynb']
    });
    await client.restoreBackup('b1', 'merge', { paths: null });
    assert.deepEqual(lastBody(), { mode: 'merge' });
  });

  test('restore of an empty choice never reaches the server', async () => {
    const before = seen.length;
    await assert.rejects(
      client.restoreBackup('b1', 'replace', { paths: [] }),
      /at least one/
    );
    await assert.rejects(
      client.previewRestore('b1', 'replace', { paths: [] }),
      /at least one/
    );
    assert.equal(seen.length, before);
  });

  test('preview is a dry run and returns the plan', async () => {
    const plan = await client.previewRestore('b1', 'replace');
    assert.deepEqual(lastBody(), { mode: 'replace', dry_run: true });
    assert.equal(plan.mode, 'replace');
    assert.equal(plan.paths, null);
    assert.deepEqual(
      plan.added.map(i => i.path),
      ['a.txt']
    );
    assert.deepEqual(plan.overwritten[0].notebook, {
      cells_added: 0,
      cells_removed: 1,
      cells_changed: 0
    });
    assert.equal(plan.overwritten[0].current_size, 12);
    assert.deepEqual(
      plan.removed.map(i => i.path),
      ['stray']
    );
    assert.deepEqual(plan.unchanged, { count: 4, bytes: 100 });

    const some = await client.previewRestore('b1', 'merge', {
      paths: ['n.ipynb']
    });
    assert.deepEqual(lastBody(), {
      mode: 'merge',
      paths: ['n.ipynb'],
      dry_run: true
    });
    assert.deepEqual(some.paths, ['n.ipynb']);
    assert.deepEqual(some.removed, []);
  });

  test('preview of an unknown path gives the server message', async () => {
    await assert.rejects(
      client.previewRestore('b1', 'merge', { paths: ['nope'] }),
      (e: unknown) => {
        assert.ok(e instanceof ApiError);
        assert.equal(e.status, 400);
        assert.equal(e.message, "'nope' is not in this backup.");
        return true;
      }
    );
  });

  test('preview fills lists an old server leaves out', async () => {
    const plan = await client.previewRestore('b2', 'merge');
    assert.deepEqual(plan.overwritten, []);
    assert.deepEqual(plan.removed, []);
    assert.deepEqual(plan.unchanged, { count: 0, bytes: 0 });
  });

  test('undo posts to /undo; 404 when there is nothing to undo', async () => {
    const job = await client.undoLastRestore();
    assert.equal(job.id, 'j3');
    assert.equal(seen[seen.length - 1].method, 'POST');
    assert.equal(seen[seen.length - 1].url, '/base/ailab/backup/undo');
    await assert.rejects(client.undoLastRestore(), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 404);
      assert.match(e.message, /no restore to undo/);
      return true;
    });
  });

  test('schedule: get, set, bad spec', async () => {
    const first = await client.getSchedule();
    assert.equal(first.spec, 'off');
    assert.equal(first.last?.outcome, 'failed');
    assert.match(first.warning ?? '', /disk full/);

    const set = await client.setSchedule('every 6h');
    const req = seen[seen.length - 1];
    assert.equal(req.method, 'PUT');
    assert.equal(req.url, '/base/ailab/backup/schedule');
    assert.equal(req.headers['authorization'], 'token secret');
    assert.deepEqual(lastBody(), { spec: 'every 6h' });
    assert.equal(set.spec, 'every 6h');
    assert.equal(set.enabled, true);
    assert.equal(set.next, '2026-01-01T06:00:00Z');
    assert.equal((await client.getSchedule()).spec, 'every 6h');

    await assert.rejects(client.setSchedule('every banana'), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 400);
      assert.equal(
        e.message,
        "Unknown schedule 'every banana': use 'every 6h'."
      );
      return true;
    });
    assert.equal((await client.getSchedule()).spec, 'every 6h');
  });

  test('settings: get, set only what changed, refusal, change token', async () => {
    assert.deepEqual((await client.getSettings()).kept, []);
    const set = await client.setSettings({
      excludes: ['models_cache'],
      keep_last: 5
    });
    const req = seen[seen.length - 1];
    assert.equal(req.method, 'PUT');
    assert.equal(req.url, '/base/ailab/backup/settings');
    assert.deepEqual(lastBody(), { excludes: ['models_cache'], keep_last: 5 });
    assert.deepEqual(set.kept, ['excludes', 'keep_last']);
    assert.equal(set.keep_last, 5);
    await assert.rejects(
      client.setSettings({ helper_image: 'evil/image' }),
      (e: unknown) => {
        assert.ok(e instanceof ApiError);
        assert.equal(e.status, 400);
        assert.equal(e.message, "The image 'evil/image' is not offered.");
        return true;
      }
    );
    assert.equal((await client.getSettings()).keep_last, 5);
    const changes = await client.getChanges();
    assert.equal(seen[seen.length - 1].url, '/base/ailab/backup/changes');
    assert.match(changes.token, /^t\d+$/);
    assert.equal(changes.job, null);
  });

  test('delete accepts 204', async () => {
    assert.equal(await client.deleteBackup('b1'), undefined);
  });

  test('upload sends raw bytes', async () => {
    const backup = await client.uploadBackup(
      new Blob([new Uint8Array([1, 2, 3])])
    );
    assert.equal(backup.id, 'up1');
    const req = seen[seen.length - 1];
    assert.equal(req.headers['content-type'], 'application/octet-stream');
    assert.deepEqual([...req.body], [1, 2, 3]);
    await assert.rejects(client.uploadBackup(new Blob([])), /Empty archive\./);
  });

  test('HTML error page gives the status', async () => {
    await assert.rejects(client.status(), {
      name: 'ApiError',
      message: 'Request failed: 500 Internal Server Error'
    });
  });

  test('unknown route gives the server message', async () => {
    await assert.rejects(client.getBackup('nope'), {
      message: 'No route GET /base/ailab/backup/nope'
    });
  });
});
