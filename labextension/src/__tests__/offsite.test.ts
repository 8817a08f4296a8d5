/**
 * Unit tests of the second store's parts: what the sidebar says of where a
 * backup is, pending copies and the key, and the client's copy, key and
 * delete-one-copy requests against a small HTTP server (`npm test`).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';

import { ServerConnection } from '@jupyterlab/services';

import { ApiError, BackupClient, IBackup, IStatus } from '../client';
import { keyFileText, offsiteOf, whereTag } from '../offsite';

function backup(extra: Partial<IBackup> = {}): IBackup {
  return {
    id: 'b1',
    created: '2026-12-01T00:00:00Z',
    label: '',
    source: { type: 'folder', name: '/nb' },
    size_bytes: 1,
    file_count: 1,
    total_bytes: 1,
    compression: 'zstd',
    kind: 'manual',
    ...extra
  };
}

const KEY_FILE = '/home/jovyan/.local/share/jupyter/ailab-backup-age.key';

function status(store: IStatus['store']): IStatus {
  return {
    mode: 'local',
    source: null,
    store,
    docker: { reachable: false },
    hint: null,
    job: null
  };
}

const local = { type: 'folder', name: '/store' };
const s3 = {
  type: 's3',
  name: 's3://bucket/ailab',
  endpoint: 'http://127.0.0.1:9000',
  encryption: { mode: 'auto', key_file: KEY_FILE, public_key: null }
};

describe('whereTag', () => {
  test('names each place, and a pending copy', () => {
    assert.equal(whereTag(backup()), null); // no second store
    assert.equal(
      whereTag(backup({ where: 'both' }))?.text,
      'here + off the machine'
    );
    const here = whereTag(backup({ where: 'here', copy: 'pending' }));
    assert.equal(here?.text, 'only here');
    assert.equal(here?.pending, true);
    const off = whereTag(backup({ where: 'off the machine' }));
    assert.match(off?.tip ?? '', /restore reads it from there/);
    assert.equal(off?.pending, false);
  });
});

describe('offsiteOf', () => {
  test('nothing without a second store or S3', () => {
    assert.equal(offsiteOf(null, []), null);
    assert.equal(offsiteOf(status(local), [backup()]), null);
  });

  test('the second store: pending copies, the copy error, what a copy copies', () => {
    const store = {
      ...local,
      copy_to: s3,
      copies_pending: ['b1'],
      copy_error: 'http://127.0.0.1:9000 cannot be reached'
    };
    const backups = [
      backup({ id: 'b1', where: 'here', copy: 'pending' }),
      backup({ id: 'b2', where: 'both' }),
      backup({ id: 'b3', where: 'off the machine' })
    ];
    const offsite = offsiteOf(status(store), backups);
    assert.equal(offsite?.second?.name, 's3://bucket/ailab');
    assert.equal(offsite?.pending, 1);
    assert.match(
      offsite?.problem ?? '',
      /^The last copy failed: .*cannot be reached/
    );
    assert.deepEqual(
      offsite?.onlyHere.map(b => b.id),
      ['b1']
    );
    assert.equal(offsite?.canMakeKey, true);
  });

  test('a key can be made only when none exists and it would be used', () => {
    const withKey = {
      ...s3,
      encryption: { ...s3.encryption, public_key: 'age1xyz' }
    };
    assert.equal(
      offsiteOf(status({ ...local, copy_to: withKey }), [])?.canMakeKey,
      false
    );
    const off = { ...s3, encryption: { ...s3.encryption, mode: 'off' } };
    assert.equal(
      offsiteOf(status({ ...local, copy_to: off }), [])?.canMakeKey,
      false
    );
    // the store itself in S3: no second store, nothing to copy
    const direct = offsiteOf(status(s3), [backup({ where: 'here' })]);
    assert.equal(direct?.second, null);
    assert.deepEqual(direct?.onlyHere, []);
    assert.equal(direct?.canMakeKey, true);
  });

  test('encrypted backups without the key: a red problem naming the key file', () => {
    const offsite = offsiteOf(
      status({ ...local, copy_to: s3, copy_error: 'x' }),
      [backup({ where: 'off the machine', encrypted: true })]
    );
    assert.match(offsite?.problem ?? '', /encrypted, but the key is missing/);
    assert.ok(offsite?.problem?.includes(KEY_FILE));
    const unreadable = {
      ...s3,
      encryption: {
        mode: 'auto',
        key_file: KEY_FILE,
        error: `The key file ${KEY_FILE} does not hold an age key`
      }
    };
    const bad = offsiteOf(status({ ...local, copy_to: unreadable }), []);
    assert.match(bad?.problem ?? '', /does not hold an age key/);
    assert.equal(bad?.canMakeKey, false); // never over a key file that is there
  });
});

describe('keyFileText', () => {
  test('the key on its own line, comments for the rest (age -d -i reads it)', () => {
    const text = keyFileText({
      private_key: 'AGE-SECRET-KEY-1ABC',
      public_key: 'age1pub',
      key_file: KEY_FILE,
      message: 'Save this key'
    });
    const lines = text.trimEnd().split('\n');
    assert.deepEqual(
      lines.filter(l => !l.startsWith('#')),
      ['AGE-SECRET-KEY-1ABC']
    );
    assert.ok(lines[0].includes('age1pub'));
  });
});

describe('BackupClient: copies, the key, one copy deleted', () => {
  let server: http.Server;
  let client: BackupClient;
  const seen: string[] = [];

  before(async () => {
    server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const url = (req.url ?? '').replace(/[?&]\d+$/, ''); // cache buster
        const key = `${req.method} ${url}`;
        seen.push(key);
        const send = (code: number, data?: unknown): void => {
          res.writeHead(code, { 'Content-Type': 'application/json' });
          res.end(data === undefined ? '' : JSON.stringify(data));
        };
        switch (key) {
          case 'POST /ailab/backup/b1/copy':
            return send(202, {
              job: { id: 'c1', kind: 'copy', state: 'queued' }
            });
          case 'POST /ailab/backup/b3/copy':
            return send(404, {
              message:
                'b3 is not held in /store: it is kept off the machine already.'
            });
          case 'POST /ailab/backup/copies':
            return send(202, {
              job: { id: 'c2', kind: 'copy', state: 'queued' }
            });
          case 'POST /ailab/backup/key':
            return seen.filter(s => s === key).length === 1
              ? send(201, {
                  private_key: 'AGE-SECRET-KEY-1ABC',
                  public_key: 'age1pub',
                  key_file: KEY_FILE,
                  message: 'Save this key'
                })
              : send(400, {
                  message: `A key already exists in ${KEY_FILE}; it was kept.`
                });
          case 'DELETE /ailab/backup/b1?where=here':
          case 'DELETE /ailab/backup/b1':
            res.writeHead(204);
            return res.end();
          default:
            return send(404, { message: `No route ${key}` });
        }
      });
    });
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    client = new BackupClient(
      ServerConnection.makeSettings({
        baseUrl: `http://127.0.0.1:${port}/`,
        token: 't'
      })
    );
  });

  after(() => server.close());

  test('copy one, copy all: the jobs', async () => {
    assert.equal((await client.copyBackup('b1')).id, 'c1');
    assert.equal((await client.copyAll()).id, 'c2');
    await assert.rejects(client.copyBackup('b3'), (error: unknown) => {
      assert.ok(error instanceof ApiError);
      assert.equal(error.status, 404);
      assert.match(error.message, /kept off the machine already/);
      return true;
    });
  });

  test('the key once, then the refusal', async () => {
    const key = await client.makeKey();
    assert.equal(key.private_key, 'AGE-SECRET-KEY-1ABC');
    await assert.rejects(client.makeKey(), /A key already exists/);
  });

  test('delete only the copy here, or every copy', async () => {
    await client.deleteBackup('b1', 'here');
    await client.deleteBackup('b1');
    assert.deepEqual(
      seen.filter(s => s.startsWith('DELETE')),
      ['DELETE /ailab/backup/b1?where=here', 'DELETE /ailab/backup/b1']
    );
  });
});
