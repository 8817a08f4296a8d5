/**
 * The decisions of the reopen plugin (see reopen.ts), apart from JupyterLab's
 * UI so that `npm test` runs them: which open documents a restore wrote, and
 * whether to revert, ask or leave each one.
 */
import type { DocumentRegistry } from '@jupyterlab/docregistry';

import type { IChanges, IRestored } from './client';

/** The parts of JupyterLab the reload needs (a JupyterFrontEnd has them). */
export interface IAppLike {
  shell: { widgets(area?: any): IterableIterator<any> };
  serviceManager: {
    contents: {
      get(
        path: string,
        options?: { content?: boolean }
      ): Promise<{ last_modified?: string }>;
    };
  };
}

/** How often the plugin asks whether a restore ended (the token is cheap). */
export const REOPEN_INTERVAL_MS = 3000;

/** An open document, as the plugin's decisions need it. */
export interface IOpenDocument {
  path: string;
  /** Holds changes not saved yet. */
  dirty: boolean;
  /** last_modified of the file when the document last read or saved it. */
  loadedModified: string | null;
}

/** What to do with an open document after a restore. */
export type Reaction = 'revert' | 'ask' | 'none';

/** True when the restore `restored` wrote the file at `path`. */
export function wasRestored(restored: IRestored, path: string): boolean {
  if (restored.paths.includes(path)) {
    return true;
  }
  if (restored.complete) {
    return false;
  }
  // Only the first files are named: anything in the restored scope may be one.
  return restored.within.some(
    scope => scope === '' || path === scope || path.startsWith(scope + '/')
  );
}

/**
 * What to do with `doc` after a restore, given the file's last_modified on
 * disk now (`diskModified`, null when the file is gone): nothing when the
 * file was not restored or is as the document read it; revert it when the
 * document has no unsaved changes; else ask.
 */
export function reaction(
  restored: IRestored,
  doc: IOpenDocument,
  diskModified: string | null
): Reaction {
  if (!wasRestored(restored, doc.path) || diskModified === null) {
    return 'none';
  }
  if (
    doc.loadedModified !== null &&
    sameTime(doc.loadedModified, diskModified)
  ) {
    return 'none'; // restored as it was: the document shows the file already
  }
  return doc.dirty ? 'ask' : 'revert';
}

function sameTime(a: string, b: string): boolean {
  const ta = Date.parse(a);
  const tb = Date.parse(b);
  return Number.isNaN(ta) || Number.isNaN(tb) ? a === b : ta === tb;
}

/**
 * Follows the change token; calls `onRestore` once for each restore or undo
 * that ended well after the watcher started (not for those before: their
 * documents were opened after them).
 */
export class RestoreWatcher {
  constructor(
    private readonly changes: () => Promise<IChanges>,
    private readonly onRestore: (jobId: string) => Promise<void>
  ) {}

  /** Ask once; returns the restore job handled, if any. */
  async check(): Promise<string | null> {
    const answer = await this.changes();
    const last = answer.last_restore ?? null;
    const id = last ? last.id : null;
    if (!this._started) {
      this._started = true;
      this._seen = id;
      return null;
    }
    if (id === null || id === this._seen) {
      return null;
    }
    this._seen = id;
    if (last && last.state === 'succeeded') {
      await this.onRestore(id);
      return id;
    }
    return null;
  }

  private _started = false;
  private _seen: string | null = null;
}

/** The open document contexts of the main area, one per path. */
export function openContexts(
  app: IAppLike
): Map<string, DocumentRegistry.Context> {
  const found = new Map<string, DocumentRegistry.Context>();
  for (const widget of app.shell.widgets('main')) {
    const context = (widget as { context?: DocumentRegistry.Context }).context;
    if (context && typeof context.revert === 'function' && context.path) {
      found.set(context.path, context);
    }
  }
  return found;
}

/** Revert the open documents that `restored` wrote; returns the paths reverted. */
export async function reloadRestored(
  app: IAppLike,
  restored: IRestored,
  ask: (path: string) => Promise<boolean>
): Promise<string[]> {
  const reverted: string[] = [];
  for (const [path, context] of openContexts(app)) {
    if (!wasRestored(restored, path)) {
      continue;
    }
    let diskModified: string | null = null;
    try {
      const model = await app.serviceManager.contents.get(path, {
        content: false
      });
      diskModified = model.last_modified ?? null;
    } catch {
      diskModified = null; // removed by the restore (replace): nothing to load
    }
    const doc: IOpenDocument = {
      path,
      dirty: context.model.dirty,
      loadedModified: context.contentsModel?.last_modified ?? null
    };
    const what = reaction(restored, doc, diskModified);
    if (what === 'none' || (what === 'ask' && !(await ask(path)))) {
      continue;
    }
    await context.revert();
    reverted.push(path);
  }
  return reverted;
}
