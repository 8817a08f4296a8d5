/**
 * The file tree of the restore dialog and the choice of paths in it, free of
 * React so that it is unit-tested (`npm test`).
 *
 * The tree is built from the preview of a full "replace" restore: what it
 * would add and overwrite (paths in the backup, which can be chosen) and what
 * it would remove (paths only in the notebooks folder now, which cannot be
 * named in a restore: they go when a folder above them is restored whole with
 * "replace"). Unchanged paths are not listed by the server (only counted);
 * restoring them changes nothing, so the tree holds every path that matters.
 */
import { IPlan, IPlanItem, RestoreMode } from './client';

export type Change = 'added' | 'overwritten' | 'removed' | 'unchanged';

export interface ITreeNode {
  /** Relative path; '' for the root (everything). */
  path: string;
  name: string;
  type: IPlanItem['type'];
  /** What a full restore with "replace" does to it; null: only its content. */
  change: Change | null;
  /** In the backup, so it can be chosen for a restore. */
  selectable: boolean;
  /** Sorted: folders first, then by name. */
  children: ITreeNode[];
  /** The plan's item, when the path is listed. */
  item: IPlanItem | null;
}

export const ROOT_PATH = '';

/** The tree of every path of a (full, replace) plan: the backup's and those replace removes. */
export function buildTree(plan: IPlan): ITreeNode {
  const root = makeNode(ROOT_PATH, 'dir', null, null);
  const nodes = new Map<string, ITreeNode>([[ROOT_PATH, root]]);
  const ensure = (path: string): ITreeNode => {
    let node = nodes.get(path);
    if (!node) {
      node = makeNode(path, 'dir', null, null);
      nodes.set(path, node);
      ensure(parentOf(path)).children.push(node);
    }
    return node;
  };
  const lists: [Change, IPlanItem[]][] = [
    ['added', plan.added],
    ['overwritten', plan.overwritten],
    ['unchanged', plan.unchanged.items ?? []],
    ['removed', plan.removed ?? []]
  ];
  for (const [change, items] of lists) {
    for (const item of items) {
      const path = normalize(item.path);
      if (path === ROOT_PATH) {
        continue;
      }
      const node = ensure(path);
      node.type = item.type;
      node.change = change;
      node.item = item;
      // Not in the backup: a restore cannot name it.
      node.selectable = change !== 'removed';
    }
  }
  sortTree(root);
  return root;
}

/** All nodes of a tree, depth first, the root first. */
export function allNodes(root: ITreeNode): ITreeNode[] {
  const out: ITreeNode[] = [];
  const walk = (node: ITreeNode): void => {
    out.push(node);
    node.children.forEach(walk);
  };
  walk(root);
  return out;
}

/**
 * Which paths of the tree are chosen. A folder that is chosen is restored
 * whole (with "replace": files in it that are not in the backup go too).
 */
export class Selection {
  constructor(readonly root: ITreeNode) {
    this.chosen = new Set(
      allNodes(root)
        .filter(n => n.selectable)
        .map(n => n.path)
    );
  }

  /** The explicitly chosen paths (folders and their contents). */
  readonly chosen: Set<string>;

  /**
   * Whether a node is restored whole in this mode: chosen itself, or a
   * folder whose every selectable child is whole (with "replace" only when
   * no path below it is missing from the backup, since restoring the folder
   * whole would remove those too).
   */
  whole(node: ITreeNode, mode: RestoreMode): boolean {
    return this._wholeMap(mode).get(node.path) ?? false;
  }

  /** Some path at or below the node is chosen. */
  partly(node: ITreeNode): boolean {
    if (this.chosen.has(node.path)) {
      return true;
    }
    return node.children.some(child => this.partly(child));
  }

  /** Everything is chosen: the restore is not limited to paths. */
  everything(mode: RestoreMode): boolean {
    return this.whole(this.root, mode);
  }

  /** Nothing is chosen: there is nothing to restore. */
  get empty(): boolean {
    return this.chosen.size === 0;
  }

  /**
   * The `paths` for the server: null for everything, else the fewest paths
   * that cover the choice (a whole folder as one path).
   */
  paths(mode: RestoreMode): string[] | null {
    const whole = this._wholeMap(mode);
    if (whole.get(ROOT_PATH)) {
      return null;
    }
    const out: string[] = [];
    const walk = (node: ITreeNode): void => {
      if (node.path !== ROOT_PATH && whole.get(node.path)) {
        out.push(node.path);
        return;
      }
      node.children.forEach(walk);
    };
    walk(this.root);
    return out;
  }

  /**
   * For a path that is not in the backup: whether a restore with "replace"
   * removes it (a folder above it is restored whole).
   */
  removedWith(node: ITreeNode, mode: RestoreMode): boolean {
    if (mode !== 'replace') {
      return false;
    }
    const whole = this._wholeMap(mode);
    for (let path = node.path; ; path = parentOf(path)) {
      if (path !== node.path && whole.get(path)) {
        return true;
      }
      if (path === ROOT_PATH) {
        return false;
      }
    }
  }

  /** Check or uncheck a node, with everything below it. */
  toggle(node: ITreeNode, mode: RestoreMode): void {
    this.set(node, !this.whole(node, mode));
  }

  set(node: ITreeNode, on: boolean): void {
    if (!node.selectable) {
      return;
    }
    for (const below of allNodes(node)) {
      if (below.selectable) {
        if (on) {
          this.chosen.add(below.path);
        } else {
          this.chosen.delete(below.path);
        }
      }
    }
    if (!on) {
      // A folder is no longer whole when a part of it is left out.
      for (let path = node.path; path !== ROOT_PATH;) {
        path = parentOf(path);
        this.chosen.delete(path);
      }
    }
    this._cache.clear();
  }

  private _wholeMap(mode: RestoreMode): Map<string, boolean> {
    let map = this._cache.get(mode);
    if (!map) {
      map = new Map();
      const walk = (node: ITreeNode): boolean => {
        const children = node.children.map(walk);
        let whole = this.chosen.has(node.path);
        if (!whole && node.selectable && node.type === 'dir') {
          const selectable = node.children.filter(c => c.selectable);
          const blocked =
            mode === 'replace' && node.children.some(c => !c.selectable);
          whole =
            selectable.length > 0 &&
            !blocked &&
            node.children.every((c, i) => !c.selectable || children[i]);
        }
        map!.set(node.path, whole);
        return whole;
      };
      walk(this.root);
      this._cache.set(mode, map);
    }
    return map;
  }

  private _cache = new Map<RestoreMode, Map<string, boolean>>();
}

/** A plan's items under the chosen paths (null: all), for quick checks. */
export function inScope(path: string, paths: string[] | null): boolean {
  return (
    paths === null ||
    paths.some(p => path === p || path.startsWith(p.replace(/\/$/, '') + '/'))
  );
}

/** The parent's path; '' for top-level paths. */
export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? ROOT_PATH : path.slice(0, slash);
}

/** A stable key of a preview request. */
export function planKey(mode: RestoreMode, paths: string[] | null): string {
  return `${mode}\n${paths === null ? '*' : JSON.stringify(paths)}`;
}

/**
 * The plan of a merge from the plan of a replace of the same paths: merge
 * adds and overwrites the same files and removes nothing (see the API:
 * `removed` is for replace only).
 */
export function asMerge(plan: IPlan): IPlan {
  return { ...plan, mode: 'merge', removed: [] };
}

/**
 * What restoring an overwritten notebook does to its cells: "restoring
 * removes 1 cell, changes 2"; '' when the server could not compare them.
 */
export function cellSummary(notebook: IPlanItem['notebook']): string {
  if (!notebook) {
    return '';
  }
  const counts: [string, number][] = [
    ['adds', notebook.cells_added ?? 0],
    ['removes', notebook.cells_removed ?? 0],
    ['changes', notebook.cells_changed ?? 0]
  ];
  const parts = counts
    .filter(([, n]) => n > 0)
    .map(([verb, n], i) =>
      i === 0 ? `${verb} ${n} ${n === 1 ? 'cell' : 'cells'}` : `${verb} ${n}`
    );
  return parts.length
    ? `restoring ${parts.join(', ')}`
    : 'same cells (only metadata or outputs differ)';
}

function makeNode(
  path: string,
  type: IPlanItem['type'],
  change: Change | null,
  item: IPlanItem | null
): ITreeNode {
  return {
    path,
    name: path.slice(path.lastIndexOf('/') + 1),
    type,
    change,
    selectable: true,
    children: [],
    item
  };
}

function normalize(path: string): string {
  return path.replace(/^\.?\/+/, '').replace(/\/+$/, '');
}

function sortTree(node: ITreeNode): void {
  node.children.sort((a, b) => {
    const da = a.type === 'dir' ? 0 : 1;
    const db = b.type === 'dir' ? 0 : 1;
    return da - db || a.name.localeCompare(b.name);
  });
  node.children.forEach(sortTree);
}
