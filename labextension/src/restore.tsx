/**
 * The restore dialog: choose merge or replace and the files to restore, and
 * see what the restore would do (a dry run of the server) before confirming.
 */
import { Dialog } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';
import React from 'react';

import {
  BackupClient,
  IBackup,
  IPlan,
  IPlanItem,
  RestoreMode,
  describeError,
  formatBytes
} from './client';
import { BackupModel, title } from './model';
import {
  ITreeNode,
  ROOT_PATH,
  Selection,
  allNodes,
  asMerge,
  buildTree,
  cellSummary,
  planKey
} from './selection';
import { formatTime } from './schedule';

/** Wait this long after a change of the selection before asking the server. */
export const PREVIEW_DELAY_MS = 400;
/** Longer lists are cut in the dialog (the counts stay exact). */
const MAX_LISTED = 300;
/** Larger trees start with their folders collapsed. */
const EXPAND_LIMIT = 150;

/** What each restore mode does to the notebooks folder. */
export const RESTORE_EFFECTS: Record<RestoreMode, string> = {
  merge:
    'Files that are in the backup overwrite the files with the same path. ' +
    'Files that are not in the backup are kept.',
  replace:
    'Files that are in the backup overwrite the files with the same path, ' +
    'and files that are NOT in the backup are removed: the folder becomes ' +
    'exactly the backup.'
};

/** What the user chose in the dialog. */
export interface IRestoreChoice {
  mode: RestoreMode;
  /** null: everything. Never empty. */
  paths: string[] | null;
  /** The preview for this choice is shown (or failed), so it may start. */
  ready: boolean;
  /** Why it may not start yet. */
  reason: string | null;
}

/**
 * The state of the dialog, kept apart from the widget so that the dialog can
 * be shown again with the same choice. Previews come from the server: the
 * tree from a full "replace" dry run; each choice of paths from a dry run of
 * "replace" with those paths; a merge's preview is that plan without the
 * removals (merge adds and overwrites the same files and removes none).
 */
export class RestoreChooser {
  constructor(
    readonly client: BackupClient,
    readonly backup: IBackup
  ) {
    void this._fetch(null).then(() => {
      const plan = this._plans.get(planKey('replace', null));
      if (plan && !this._disposed) {
        this.tree = buildTree(plan);
        this.selection = new Selection(this.tree);
        const count = allNodes(this.tree).length;
        if (count > EXPAND_LIMIT) {
          // Only the top level open.
          for (const node of allNodes(this.tree)) {
            if (node.path !== ROOT_PATH && node.children.length) {
              this.collapsed.add(node.path);
            }
          }
        }
        this._changed.emit();
      }
    });
  }

  mode: RestoreMode = 'merge';
  tree: ITreeNode | null = null;
  selection: Selection | null = null;
  /** Folders shown collapsed. */
  readonly collapsed = new Set<string>();
  /** Shown when the dialog was confirmed too early and opened again. */
  notice: string | null = null;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The paths to restore: null for everything, [] for nothing. */
  get paths(): string[] | null {
    return this.selection ? this.selection.paths(this.mode) : null;
  }

  /** The preview of the current choice, or null while it loads. */
  get plan(): IPlan | null {
    const paths = this.paths;
    if (paths !== null && paths.length === 0) {
      return null;
    }
    const plan = this._plans.get(planKey('replace', paths));
    if (!plan) {
      return null;
    }
    return this.mode === 'merge' ? asMerge(plan) : plan;
  }

  /** The error of the current choice's preview. */
  get error(): string | null {
    const paths = this.paths;
    if (paths !== null && paths.length === 0) {
      return null;
    }
    return this._errors.get(planKey('replace', paths)) ?? null;
  }

  /** The last plan shown, while the next one loads. */
  get lastPlan(): IPlan | null {
    return this._lastPlan
      ? this.mode === 'merge'
        ? asMerge(this._lastPlan)
        : this._lastPlan
      : null;
  }

  get choice(): IRestoreChoice {
    const paths = this.paths;
    let reason: string | null = null;
    if (paths !== null && paths.length === 0) {
      reason = 'Choose at least one file or folder to restore.';
    } else if (!this.plan && !this.error) {
      reason = 'Wait for the preview of the restore.';
    }
    return { mode: this.mode, paths, ready: reason === null, reason };
  }

  setMode(mode: RestoreMode): void {
    this.mode = mode;
    this.notice = null;
    this._changed.emit();
    // Whole folders differ between the modes: the paths may change too.
    this._schedule();
  }

  toggle(node: ITreeNode): void {
    if (!this.selection) {
      return;
    }
    this.selection.toggle(node, this.mode);
    this.notice = null;
    this._changed.emit();
    this._schedule();
  }

  toggleCollapsed(node: ITreeNode): void {
    if (this.collapsed.has(node.path)) {
      this.collapsed.delete(node.path);
    } else {
      this.collapsed.add(node.path);
    }
    this._changed.emit();
  }

  dispose(): void {
    this._disposed = true;
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
    Signal.clearData(this);
  }

  /** Ask for the preview of the current paths, once they stay put. */
  private _schedule(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    this._timer = window.setTimeout(() => {
      this._timer = null;
      const paths = this.paths;
      if (paths === null || paths.length > 0) {
        void this._fetch(paths);
      }
    }, PREVIEW_DELAY_MS);
  }

  private async _fetch(paths: string[] | null): Promise<void> {
    const key = planKey('replace', paths);
    if (this._plans.has(key) || this._pending.has(key)) {
      return;
    }
    this._pending.add(key);
    this._errors.delete(key);
    try {
      const plan = await this.client.previewRestore(this.backup.id, 'replace', {
        paths
      });
      this._plans.set(key, plan);
      this._lastPlan = plan;
    } catch (error) {
      this._errors.set(key, describeError(error));
    } finally {
      this._pending.delete(key);
    }
    if (!this._disposed) {
      this._changed.emit();
    }
  }

  private _changed = new Signal<this, void>(this);
  private _plans = new Map<string, IPlan>();
  private _errors = new Map<string, string>();
  private _pending = new Set<string>();
  private _lastPlan: IPlan | null = null;
  private _timer: number | null = null;
  private _disposed = false;
}

/** Dialog body: mode, files and the preview. */
export class RestoreBody
  extends ReactWidget
  implements Dialog.IBodyWidget<IRestoreChoice>
{
  constructor(readonly chooser: RestoreChooser) {
    super();
    this.addClass('jp-AILabBackup-restoreDialog');
    chooser.changed.connect(this._onChanged, this);
  }

  getValue(): IRestoreChoice {
    return this.chooser.choice;
  }

  dispose(): void {
    this.chooser.changed.disconnect(this._onChanged, this);
    super.dispose();
  }

  render(): JSX.Element {
    return (
      <>
        <RestoreView chooser={this.chooser} />
        <input
          className="jp-AILabBackup-validity"
          hidden
          aria-hidden="true"
          tabIndex={-1}
          ref={el => {
            this._validity = el;
            this._syncAccept();
          }}
        />
      </>
    );
  }

  private _onChanged(): void {
    this.update();
    this._syncAccept();
  }

  /**
   * The Restore button waits for the preview of the current choice: a hidden
   * input is invalid meanwhile, and the dialog disables its accept button
   * (and ignores Enter) while one of its inputs is invalid. It checks them on
   * input events, so one is sent.
   */
  private _syncAccept(): void {
    const input = this._validity;
    if (!input) {
      return;
    }
    const { reason } = this.chooser.choice;
    input.setCustomValidity(reason ?? '');
    input.dispatchEvent(new Event('input', { bubbles: true }));
    const button = this.node
      .closest('.jp-Dialog-content')
      ?.querySelector<HTMLButtonElement>('.jp-Dialog-footer .jp-mod-accept');
    if (button) {
      button.title = reason ?? '';
    }
  }

  private _validity: HTMLInputElement | null = null;
}

function RestoreView({ chooser }: { chooser: RestoreChooser }): JSX.Element {
  const b = chooser.backup;
  const mode = chooser.mode;
  const paths = chooser.paths;
  const option = (value: RestoreMode, text: string): JSX.Element => (
    <label className="jp-AILabBackup-radio">
      <input
        type="radio"
        name="ailab-backup-restore-mode"
        value={value}
        checked={mode === value}
        onChange={() => chooser.setMode(value)}
      />
      <span>
        <strong>{text}</strong> — {RESTORE_EFFECTS[value]}
      </span>
    </label>
  );
  return (
    <div>
      <p>
        Restore {title(b)} from {formatTime(b.created)} ({b.file_count} files,{' '}
        {formatBytes(b.total_bytes || b.size_bytes)}) into the notebooks folder.
      </p>
      <fieldset className="jp-AILabBackup-fieldset">
        <legend>How</legend>
        {option('merge', 'Merge')}
        {option('replace', 'Replace')}
      </fieldset>
      {mode === 'replace' && (
        <p className="jp-AILabBackup-inaccessible">
          {paths === null
            ? 'Replace removes every file that is not in this backup, ' +
              'including notebooks created after it.'
            : 'Replace removes every file that is not in this backup from ' +
              'the chosen folders.'}{' '}
          Unsaved changes in open notebooks are lost.
        </p>
      )}
      <div className="jp-AILabBackup-restoreColumns">
        <FileChooser chooser={chooser} />
        <PreviewView chooser={chooser} />
      </div>
      {chooser.notice && (
        <p className="jp-AILabBackup-error" role="alert">
          {chooser.notice}
        </p>
      )}
      <p className="jp-AILabBackup-muted">
        A safety backup of the current notebooks folder is taken first: “Undo
        last restore” brings it back. A Secure Configuration Storage in the
        backup is restored too: restart the kernels that use it afterwards.
        Notebooks open in JupyterLab keep their old content until reloaded from
        disk.
      </p>
    </div>
  );
}

/** The tree of changed paths with checkboxes. */
function FileChooser({ chooser }: { chooser: RestoreChooser }): JSX.Element {
  const { tree, selection } = chooser;
  let content: JSX.Element;
  if (!tree || !selection) {
    content = (
      <p className="jp-AILabBackup-muted">
        {chooser.error && !tree
          ? 'The files cannot be listed; the whole backup is restored.'
          : 'Comparing the backup with the notebooks folder…'}
      </p>
    );
  } else {
    content = (
      <ul className="jp-AILabBackup-tree" aria-label="Files to restore">
        <TreeRow chooser={chooser} node={tree} depth={0} />
      </ul>
    );
  }
  return (
    <fieldset className="jp-AILabBackup-fieldset">
      <legend>What</legend>
      {content}
      {tree && tree.children.length === 0 && (
        <p className="jp-AILabBackup-muted">No file differs from the backup.</p>
      )}
    </fieldset>
  );
}

const CHANGE_TAGS: Record<string, [string, string]> = {
  added: ['missing', 'Missing now: the restore adds it'],
  overwritten: [
    'changed',
    'Differs from the backup: the restore overwrites it'
  ],
  removed: ['not in backup', 'Not in the backup: replace removes it'],
  unchanged: ['same', 'Same as in the backup: the restore leaves it as it is']
};

function TreeRow({
  chooser,
  node,
  depth
}: {
  chooser: RestoreChooser;
  node: ITreeNode;
  depth: number;
}): JSX.Element | null {
  const selection = chooser.selection!;
  const mode = chooser.mode;
  if (!node.selectable && mode === 'merge') {
    return null; // merge removes nothing: paths only here now do not matter
  }
  const isRoot = node.path === ROOT_PATH;
  const children = node.children.filter(
    c => c.selectable || mode === 'replace'
  );
  const open = !chooser.collapsed.has(node.path);
  const whole = node.selectable
    ? selection.whole(node, mode)
    : selection.removedWith(node, mode);
  const mixed = node.selectable && !whole && selection.partly(node);
  const name = isRoot
    ? 'Everything'
    : node.name + (node.type === 'dir' ? '/' : '');
  const tag = node.change ? CHANGE_TAGS[node.change] : null;
  return (
    <li>
      <div
        className="jp-AILabBackup-treeRow"
        style={{ paddingLeft: `${depth * 14}px` }}
      >
        {children.length > 0 && !isRoot ? (
          <button
            type="button"
            className="jp-AILabBackup-twisty"
            aria-expanded={open}
            aria-label={`${open ? 'Collapse' : 'Expand'} ${node.path}`}
            onClick={() => chooser.toggleCollapsed(node)}
          >
            {open ? '▾' : '▸'}
          </button>
        ) : (
          <span className="jp-AILabBackup-twisty" aria-hidden="true" />
        )}
        <label
          className="jp-AILabBackup-treeLabel"
          title={
            node.selectable
              ? isRoot
                ? 'The whole backup'
                : node.path
              : `${node.path}: not in the backup; replace removes it when ` +
                'the folder above it is restored whole'
          }
        >
          <input
            type="checkbox"
            aria-label={isRoot ? 'Everything' : node.path}
            checked={whole}
            disabled={!node.selectable}
            ref={el => {
              if (el) {
                el.indeterminate = mixed;
              }
            }}
            onChange={() => chooser.toggle(node)}
          />
          <span className="jp-AILabBackup-treeName">{name}</span>
        </label>
        {tag && (
          <span
            className={`jp-AILabBackup-tag jp-mod-${node.change}`}
            title={tag[1]}
          >
            {tag[0]}
          </span>
        )}
      </div>
      {children.length > 0 && (open || isRoot) && (
        <ul>
          {children.map(child => (
            <TreeRow
              key={child.path}
              chooser={chooser}
              node={child}
              depth={depth + 1}
            />
          ))}
        </ul>
      )}
    </li>
  );
}

/** The counts and lists of what the restore would do. */
function PreviewView({ chooser }: { chooser: RestoreChooser }): JSX.Element {
  const plan = chooser.plan;
  const error = chooser.error;
  const { paths } = chooser;
  let body: JSX.Element;
  if (paths !== null && paths.length === 0) {
    body = (
      <p className="jp-AILabBackup-muted">
        Nothing is chosen: choose files or folders above.
      </p>
    );
  } else if (error) {
    body = (
      <p className="jp-AILabBackup-error">
        The preview failed: {error} The restore can still be started; a safety
        backup is taken first.
      </p>
    );
  } else {
    const shown = plan ?? chooser.lastPlan;
    body = (
      <>
        {!plan && (
          <p className="jp-AILabBackup-muted" role="status">
            {shown
              ? 'Updating the preview…'
              : 'Comparing the backup with the notebooks folder…'}
          </p>
        )}
        {shown && <PlanView plan={shown} stale={!plan} />}
      </>
    );
  }
  return (
    <section
      className="jp-AILabBackup-fieldset jp-AILabBackup-preview"
      aria-label="Preview"
      aria-busy={!plan && !error}
    >
      <h3 className="jp-AILabBackup-previewTitle">Preview</h3>
      {body}
    </section>
  );
}

function PlanView({
  plan,
  stale
}: {
  plan: IPlan;
  stale: boolean;
}): JSX.Element {
  const changes =
    plan.added.length + plan.overwritten.length + plan.removed.length;
  return (
    <div className={stale ? 'jp-AILabBackup-stale' : ''}>
      <p className="jp-AILabBackup-planSummary" aria-label="Summary">
        <span>{plan.added.length} added</span> ·{' '}
        <span>{plan.overwritten.length} overwritten</span> ·{' '}
        <span>
          {plan.mode === 'replace'
            ? `${plan.removed.length} removed`
            : 'none removed (merge)'}
        </span>{' '}
        ·{' '}
        <span>
          {plan.unchanged.count} unchanged ({formatBytes(plan.unchanged.bytes)})
        </span>
      </p>
      {changes === 0 ? (
        <p className="jp-AILabBackup-muted">
          Nothing would change: the chosen files equal the backup.
        </p>
      ) : (
        <div
          className="jp-AILabBackup-planLists"
          tabIndex={0}
          role="group"
          aria-label="Changes"
        >
          <PlanList
            name="Overwritten"
            items={plan.overwritten}
            note="differs now; the backup's version replaces it"
          />
          <PlanList
            name="Added"
            items={plan.added}
            note="missing now; restored from the backup"
          />
          {plan.mode === 'replace' && (
            <PlanList
              name="Removed"
              items={plan.removed}
              note="not in the backup"
            />
          )}
        </div>
      )}
    </div>
  );
}

function PlanList({
  name,
  items,
  note
}: {
  name: string;
  items: IPlanItem[];
  note: string;
}): JSX.Element | null {
  if (items.length === 0) {
    return null;
  }
  const shown = items.slice(0, MAX_LISTED);
  return (
    <div className="jp-AILabBackup-planList">
      <h4 title={note}>
        {name} ({items.length})
      </h4>
      <ul aria-label={name}>
        {shown.map(item => (
          <li key={item.path}>
            <span className="jp-AILabBackup-planPath">
              {item.path}
              {item.type === 'dir' ? '/' : ''}
            </span>{' '}
            <span className="jp-AILabBackup-muted">{itemSize(item)}</span>
            {item.notebook !== undefined && item.path.endsWith('.ipynb') && (
              <div className="jp-AILabBackup-cells">
                {cellSummary(item.notebook) ||
                  'cells not compared (not a readable notebook)'}
              </div>
            )}
          </li>
        ))}
        {items.length > shown.length && (
          <li className="jp-AILabBackup-muted">
            … and {items.length - shown.length} more
          </li>
        )}
      </ul>
    </div>
  );
}

function itemSize(item: IPlanItem): string {
  if (item.type !== 'file') {
    return item.type === 'symlink' ? 'link' : '';
  }
  if (item.current_size !== undefined && item.current_size !== item.size) {
    return `${formatBytes(item.current_size)} → ${formatBytes(item.size)}`;
  }
  return formatBytes(item.size);
}

/**
 * Show the restore dialog and start the restore when confirmed. Confirmed
 * before the preview is there (Enter in the dialog), it opens again.
 */
export async function confirmRestore(
  model: BackupModel,
  backup: IBackup
): Promise<void> {
  const chooser = new RestoreChooser(model.client, backup);
  try {
    for (;;) {
      const dialog = new Dialog<IRestoreChoice>({
        title: 'Restore backup',
        body: new RestoreBody(chooser),
        buttons: [
          Dialog.cancelButton(),
          Dialog.warnButton({ label: 'Restore' })
        ],
        focusNodeSelector: `input[value="${chooser.mode}"]`
      });
      dialog.addClass('jp-AILabBackup-restoreHost'); // a larger dialog
      const result = await dialog.launch();
      if (!result.button.accept || !result.value) {
        return;
      }
      const choice = result.value;
      if (choice.ready) {
        await model.restore(backup, choice.mode, choice.paths);
        return;
      }
      chooser.notice = choice.reason;
    }
  } finally {
    chooser.dispose();
  }
}
