/**
 * Unit tests of the restore dialog's file tree and choice of paths, and of
 * the schedule form (`npm test`).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { IPlan, IPlanItem } from '../client';
import {
  ITreeNode,
  Selection,
  allNodes,
  asMerge,
  buildTree,
  cellSummary,
  planKey
} from '../selection';
import { describeSpec, formOf, specOf } from '../schedule';

const file = (path: string, extra: Partial<IPlanItem> = {}): IPlanItem => ({
  path,
  type: 'file',
  size: 1,
  ...extra
});
const dir = (path: string): IPlanItem => ({ path, type: 'dir', size: 0 });

/** A full replace plan: private/ has a changed and a stray file. */
function plan(): IPlan {
  return {
    backup_id: 'b',
    mode: 'replace',
    paths: null,
    added: [dir('docs'), file('docs/a.md'), file('docs/deep/b.md')],
    overwritten: [
      file('analysis.ipynb', {
        notebook: { cells_added: 0, cells_removed: 1, cells_changed: 0 }
      }),
      file('private/secret.txt')
    ],
    removed: [
      file('stray.txt'),
      file('private/extra.txt'),
      dir('junk'),
      file('junk/x')
    ],
    unchanged: { count: 3, bytes: 30 }
  };
}

function find(root: ITreeNode, path: string): ITreeNode {
  const node = allNodes(root).find(n => n.path === path);
  assert.ok(node, path);
  return node;
}

describe('buildTree', () => {
  test('holds every listed path with its folders, folders first', () => {
    const root = buildTree(plan());
    assert.deepEqual(
      root.children.map(c => c.name),
      ['docs', 'junk', 'private', 'analysis.ipynb', 'stray.txt']
    );
    assert.deepEqual(
      find(root, 'docs').children.map(c => c.path),
      ['docs/deep', 'docs/a.md']
    );
    // docs/deep is not listed itself (it is in the backup; only its file is new)
    const deep = find(root, 'docs/deep');
    assert.equal(deep.type, 'dir');
    assert.equal(deep.change, null);
    assert.equal(deep.selectable, true);
    assert.equal(find(root, 'private/secret.txt').change, 'overwritten');
    assert.equal(find(root, 'docs').change, 'added');
  });

  test('paths only in the folder now cannot be chosen', () => {
    const root = buildTree(plan());
    for (const path of ['stray.txt', 'private/extra.txt', 'junk', 'junk/x']) {
      assert.equal(find(root, path).selectable, false, path);
      assert.equal(find(root, path).change, 'removed');
    }
  });

  test('no changes: only the root', () => {
    const root = buildTree({
      ...plan(),
      added: [],
      overwritten: [],
      removed: []
    });
    assert.equal(root.path, '');
    assert.deepEqual(root.children, []);
  });
});

describe('Selection', () => {
  test('everything at first: no paths', () => {
    const s = new Selection(buildTree(plan()));
    assert.equal(s.paths('merge'), null);
    assert.equal(s.paths('replace'), null);
    assert.equal(s.everything('replace'), true);
  });

  test('unchecking the root chooses nothing', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(root, 'replace');
    assert.equal(s.empty, true);
    assert.deepEqual(s.paths('replace'), []);
    assert.equal(s.partly(root), false);
  });

  test('only one folder: the folder, whole, removes its extras', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(root, 'replace');
    s.toggle(find(root, 'private'), 'replace');
    assert.deepEqual(s.paths('replace'), ['private']);
    assert.deepEqual(s.paths('merge'), ['private']);
    assert.equal(s.whole(find(root, 'private/secret.txt'), 'replace'), true);
    assert.equal(
      s.removedWith(find(root, 'private/extra.txt'), 'replace'),
      true
    );
    assert.equal(
      s.removedWith(find(root, 'private/extra.txt'), 'merge'),
      false
    );
    assert.equal(s.removedWith(find(root, 'stray.txt'), 'replace'), false);
    assert.equal(s.whole(root, 'replace'), false);
    assert.equal(s.partly(root), true);
  });

  test('checking a folder checks its children; unchecking one unchecks the folder', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(root, 'replace');
    s.toggle(find(root, 'docs'), 'replace');
    for (const path of ['docs', 'docs/a.md', 'docs/deep', 'docs/deep/b.md']) {
      assert.equal(s.whole(find(root, path), 'replace'), true, path);
    }
    s.toggle(find(root, 'docs/a.md'), 'replace');
    assert.equal(s.whole(find(root, 'docs'), 'replace'), false);
    assert.equal(s.partly(find(root, 'docs')), true);
    assert.deepEqual(s.paths('replace'), ['docs/deep']);
    // all children again: the folder is whole again (it has no extras)
    s.toggle(find(root, 'docs/a.md'), 'replace');
    assert.deepEqual(s.paths('replace'), ['docs']);
  });

  test('a file alone in a folder with extras: only the file with replace', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(root, 'replace');
    s.toggle(find(root, 'private/secret.txt'), 'replace');
    // replace would remove private/extra.txt if the folder were sent
    assert.deepEqual(s.paths('replace'), ['private/secret.txt']);
    assert.equal(
      s.removedWith(find(root, 'private/extra.txt'), 'replace'),
      false
    );
    // merge removes nothing: the folder is as good
    assert.deepEqual(s.paths('merge'), ['private']);
  });

  test('unchecking a child of the root keeps the rest', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(find(root, 'analysis.ipynb'), 'replace');
    assert.deepEqual(s.paths('replace'), ['docs', 'private']);
    // merge: every other changed path, the same
    assert.deepEqual(s.paths('merge'), ['docs', 'private']);
    // root-level extras are not removed any more
    assert.equal(s.removedWith(find(root, 'stray.txt'), 'replace'), false);
    assert.equal(s.removedWith(find(root, 'junk/x'), 'replace'), false);
  });

  test('rechecking the last child of the root gives everything with merge only', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(find(root, 'analysis.ipynb'), 'replace');
    s.toggle(find(root, 'analysis.ipynb'), 'replace');
    assert.equal(s.paths('merge'), null);
    // with replace, "everything" would also remove stray.txt and junk/: not chosen
    assert.deepEqual(s.paths('replace'), ['docs', 'private', 'analysis.ipynb']);
    s.toggle(root, 'replace');
    assert.equal(s.paths('replace'), null);
  });

  test('paths only here now do not toggle', () => {
    const root = buildTree(plan());
    const s = new Selection(root);
    s.toggle(find(root, 'stray.txt'), 'replace');
    assert.equal(s.paths('replace'), null);
  });
});

describe('plan helpers', () => {
  test('merge from replace drops the removals only', () => {
    const merged = asMerge(plan());
    assert.equal(merged.mode, 'merge');
    assert.deepEqual(merged.removed, []);
    assert.deepEqual(merged.added, plan().added);
    assert.deepEqual(merged.unchanged, plan().unchanged);
  });

  test('planKey tells choices apart', () => {
    assert.notEqual(planKey('replace', null), planKey('replace', []));
    assert.notEqual(planKey('merge', ['a']), planKey('replace', ['a']));
    assert.equal(planKey('merge', ['a', 'b']), planKey('merge', ['a', 'b']));
  });

  test('cellSummary', () => {
    assert.equal(
      cellSummary({ cells_added: 0, cells_removed: 1, cells_changed: 0 }),
      'restoring removes 1 cell'
    );
    assert.equal(
      cellSummary({ cells_added: 2, cells_removed: 1, cells_changed: 3 }),
      'restoring adds 2 cells, removes 1, changes 3'
    );
    assert.equal(
      cellSummary({ cells_added: 0, cells_removed: 0, cells_changed: 0 }),
      'same cells (only metadata or outputs differ)'
    );
    assert.equal(cellSummary(null), '');
  });
});

describe('schedule form', () => {
  test('specs the select knows', () => {
    assert.equal(formOf('off').choice, 'off');
    assert.equal(formOf('').choice, 'off');
    assert.equal(formOf('every 1h').choice, 'hourly');
    assert.equal(formOf('every 60m').choice, 'hourly');
    assert.equal(formOf('Every 6h').choice, 'every6h');
    assert.equal(formOf('every 6 hours').choice, 'every6h');
    assert.deepEqual(formOf('daily 2:30'), {
      choice: 'daily',
      time: '02:30',
      text: 'daily 2:30'
    });
  });

  test('other specs are shown as text', () => {
    assert.deepEqual(formOf('every 30m'), {
      choice: 'custom',
      time: '',
      text: 'every 30m'
    });
    assert.equal(formOf('daily 25:00').choice, 'custom');
  });

  test('the spec sent for each choice', () => {
    const base = { time: '', text: '' };
    assert.equal(specOf({ ...base, choice: 'off' }), 'off');
    assert.equal(specOf({ ...base, choice: 'hourly' }), 'every 1h');
    assert.equal(specOf({ ...base, choice: 'every6h' }), 'every 6h');
    assert.equal(
      specOf({ ...base, choice: 'daily', time: '23:05' }),
      'daily 23:05'
    );
    assert.equal(specOf({ ...base, choice: 'daily' }), 'daily 02:00');
    assert.equal(
      specOf({ ...base, choice: 'custom', text: ' every 30m ' }),
      'every 30m'
    );
    for (const spec of [
      'off',
      'every 1h',
      'every 6h',
      'daily 02:30',
      'every 30m'
    ]) {
      assert.equal(specOf(formOf(spec)), spec, spec);
    }
  });

  test('in words', () => {
    assert.equal(describeSpec('off'), 'Off');
    assert.equal(describeSpec('every 1h'), 'Every hour');
    assert.equal(describeSpec('every 6h'), 'Every 6 hours');
    assert.equal(describeSpec('every 30m'), 'Every 30 minutes');
    assert.equal(describeSpec('daily 2:30'), 'Daily at 02:30 UTC');
  });
});
