/**
 * Open documents after a restore (`npm test`): which ones a restore wrote,
 * and that each is reverted, asked about, or left alone as it should be.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import type { IChanges, IRestored } from '../client';
import {
  IAppLike,
  RestoreWatcher,
  reaction,
  reloadRestored,
  wasRestored
} from '../reopenlogic';

const RESTORED: IRestored = {
  paths: ['work/analysis.ipynb', 'intro.ipynb'],
  complete: true,
  within: ['work', 'intro.ipynb'],
  scs: false
};

describe('wasRestored', () => {
  test('a complete list names exactly the restored files', () => {
    assert.equal(wasRestored(RESTORED, 'work/analysis.ipynb'), true);
    assert.equal(wasRestored(RESTORED, 'work/other.ipynb'), false);
    assert.equal(wasRestored(RESTORED, 'work'), false);
  });

  test('a cut list: anything in the restored scope may be one', () => {
    const cut = { ...RESTORED, complete: false };
    assert.equal(wasRestored(cut, 'work/other.ipynb'), true);
    assert.equal(wasRestored(cut, 'workshop/x.ipynb'), false);
    assert.equal(wasRestored({ ...cut, within: [''] }, 'any/where.py'), true);
  });
});

describe('reaction', () => {
  const doc = {
    path: 'intro.ipynb',
    dirty: false,
    loadedModified: '2026-12-02T10:00:00.000000Z'
  };

  test('a clean document of a restored file is reverted', () => {
    assert.equal(reaction(RESTORED, doc, '2026-11-20T08:00:00Z'), 'revert');
  });

  test('unsaved changes: the user is asked', () => {
    assert.equal(
      reaction(RESTORED, { ...doc, dirty: true }, '2026-11-20T08:00:00Z'),
      'ask'
    );
  });

  test('left alone: not restored, restored as it was, or gone', () => {
    assert.equal(
      reaction(RESTORED, { ...doc, path: 'x.ipynb' }, '2026-11-20T08:00:00Z'),
      'none'
    );
    assert.equal(reaction(RESTORED, doc, '2026-12-02T10:00:00Z'), 'none');
    assert.equal(reaction(RESTORED, doc, null), 'none');
  });
});

describe('RestoreWatcher', () => {
  test('acts once per restore that ended well after it started', async () => {
    const answers: IChanges[] = [
      {
        token: 'a',
        job: null,
        last_restore: { id: 'old', state: 'succeeded', finished: 't0' }
      },
      {
        token: 'b',
        job: 'r1',
        last_restore: { id: 'old', state: 'succeeded', finished: 't0' }
      },
      {
        token: 'c',
        job: null,
        last_restore: { id: 'r1', state: 'succeeded', finished: 't1' }
      },
      {
        token: 'c',
        job: null,
        last_restore: { id: 'r1', state: 'succeeded', finished: 't1' }
      },
      {
        token: 'd',
        job: null,
        last_restore: { id: 'r2', state: 'failed', finished: 't2' }
      }
    ];
    const handled: string[] = [];
    const watcher = new RestoreWatcher(
      async () => answers.shift() as IChanges,
      async id => {
        handled.push(id);
      }
    );
    const results = [];
    for (let i = 0; i < 5; i++) {
      results.push(await watcher.check());
    }
    assert.deepEqual(handled, ['r1']);
    assert.deepEqual(results, [null, null, 'r1', null, null]);
  });
});

/** A fake JupyterLab with open documents; records reverts. */
function fakeApp(
  docs: { path: string; dirty: boolean; loaded: string }[],
  disk: Record<string, string>
): { app: IAppLike; reverted: string[] } {
  const reverted: string[] = [];
  const widgets = docs.map(d => ({
    context: {
      path: d.path,
      model: { dirty: d.dirty },
      contentsModel: { last_modified: d.loaded },
      revert: async () => {
        reverted.push(d.path);
      }
    }
  }));
  widgets.push({ context: undefined } as any); // a widget that is no document
  const app: IAppLike = {
    shell: { widgets: () => widgets[Symbol.iterator]() },
    serviceManager: {
      contents: {
        get: async (path: string) => {
          if (!(path in disk)) {
            throw new Error('404');
          }
          return { last_modified: disk[path] };
        }
      }
    }
  };
  return { app, reverted };
}

describe('reloadRestored', () => {
  const loaded = '2026-12-02T10:00:00Z';
  const disk = {
    'intro.ipynb': '2026-11-20T08:00:00Z',
    'work/analysis.ipynb': '2026-11-20T08:00:00Z',
    'notes.md': '2026-12-02T11:00:00Z'
  };

  test('reverts clean restored documents, asks for dirty ones', async () => {
    const { app, reverted } = fakeApp(
      [
        { path: 'intro.ipynb', dirty: false, loaded },
        { path: 'work/analysis.ipynb', dirty: true, loaded },
        { path: 'notes.md', dirty: false, loaded }
      ],
      disk
    );
    const asked: string[] = [];
    const keepMine = async (path: string) => {
      asked.push(path);
      return false;
    };
    assert.deepEqual(await reloadRestored(app, RESTORED, keepMine), [
      'intro.ipynb'
    ]);
    assert.deepEqual(reverted, ['intro.ipynb']);
    assert.deepEqual(asked, ['work/analysis.ipynb']);
  });

  test('"take the restored one" reverts the dirty document', async () => {
    const { app, reverted } = fakeApp(
      [{ path: 'work/analysis.ipynb', dirty: true, loaded }],
      disk
    );
    await reloadRestored(app, RESTORED, async () => true);
    assert.deepEqual(reverted, ['work/analysis.ipynb']);
  });
});
