/**
 * The "Backups" sidebar: a ReactWidget rendering a BackupModel.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import {
  Button,
  InputGroup,
  closeIcon,
  ReactWidget,
  UseSignal,
  fileUploadIcon,
  refreshIcon
} from '@jupyterlab/ui-components';
import React, { useRef, useState } from 'react';

import { IBackup, IJob, IStatus, RestoreMode, formatBytes } from './client';
import { backupIcon } from './icon';
import { BackupModel, title } from './model';

/** File types offered by the upload picker (the server checks the content). */
const ACCEPT = '.zst,.gz,.tgz,.tar,application/zstd,application/gzip';

export class BackupPanel extends ReactWidget {
  constructor(readonly model: BackupModel) {
    super();
    this.id = 'ailab-backup-panel';
    this.addClass('jp-AILabBackup');
    this.title.icon = backupIcon;
    this.title.caption = 'Backups';
  }

  protected onAfterShow(): void {
    void this.model.refresh();
  }

  /** Focus the label input (used by the "Open backups" command). */
  focusLabel(): void {
    // The first render may still be pending right after the panel is shown.
    requestAnimationFrame(() =>
      this.node.querySelector<HTMLInputElement>('input[name="label"]')?.focus()
    );
  }

  dispose(): void {
    if (!this.isDisposed) {
      this.model.dispose();
    }
    super.dispose();
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => <BackupView model={this.model} />}
      </UseSignal>
    );
  }
}

function BackupView({ model }: { model: BackupModel }): JSX.Element {
  const drop = useFileDrop(file => void model.upload(file));
  return (
    <div className="jp-AILabBackup-content" {...drop.handlers}>
      <header className="jp-AILabBackup-header">
        <h2 className="jp-AILabBackup-title">Backups</h2>
        <Button
          minimal
          small
          title="Refresh status and list"
          aria-label="Refresh status and list"
          onClick={() => void model.refresh()}
        >
          <refreshIcon.react tag="span" elementSize="normal" />
        </Button>
      </header>
      {model.loadError && (
        <div className="jp-AILabBackup-error" role="alert">
          {model.loadError}
        </div>
      )}
      <StatusView status={model.status} loading={model.activity} />
      <BackupForm model={model} />
      <JobView model={model} />
      <UploadZone model={model} over={drop.over} />
      <BackupList model={model} />
    </div>
  );
}

function StatusView({
  status,
  loading
}: {
  status: IStatus | null;
  loading: string;
}): JSX.Element {
  if (!status) {
    return (
      <section className="jp-AILabBackup-section" aria-label="Status">
        <p className="jp-AILabBackup-muted">
          {loading === 'loading' ? 'Loading…' : 'No status.'}
        </p>
      </section>
    );
  }
  const docker = status.docker ?? { reachable: false };
  // Without Docker, local mode works; red only where Docker is needed.
  const dockerProblem =
    !docker.reachable && (status.mode === 'docker' || !!status.hint);
  return (
    <section className="jp-AILabBackup-section" aria-label="Status">
      <dl className="jp-AILabBackup-status">
        <dt>Mode</dt>
        <dd>{status.mode === 'docker' ? 'Docker volume' : 'Local folder'}</dd>
        <dt>Source</dt>
        <dd title={status.source?.found_by ?? ''}>
          {status.source
            ? `${status.source.name} (${status.source.type})`
            : '–'}
        </dd>
        <dt>Store</dt>
        <dd>
          {status.store ? `${status.store.name} (${status.store.type})` : '–'}
        </dd>
        <dt>Docker</dt>
        <dd
          className={
            docker.reachable
              ? 'jp-AILabBackup-ok'
              : dockerProblem
                ? 'jp-AILabBackup-inaccessible'
                : 'jp-AILabBackup-muted'
          }
          title={docker.url ?? ''}
        >
          {docker.reachable
            ? `reachable${docker.version ? ` (${docker.version})` : ''}`
            : dockerProblem
              ? 'INACCESSIBLE'
              : 'not reachable (not needed)'}
        </dd>
      </dl>
      {(status.hint || (status.mode === 'docker' && !docker.reachable)) && (
        <div className="jp-AILabBackup-warning" role="alert">
          {status.hint ?? 'Docker is not reachable.'}
        </div>
      )}
    </section>
  );
}

function BackupForm({ model }: { model: BackupModel }): JSX.Element {
  const [label, setLabel] = useState('');
  const start = (): void => {
    void model.backup(label).then(() => {
      if (model.jobRunning) {
        setLabel('');
      }
    });
  };
  return (
    <form
      className="jp-AILabBackup-section jp-AILabBackup-form"
      aria-label="New backup"
      onSubmit={event => {
        event.preventDefault();
        start();
      }}
    >
      <label htmlFor="jp-AILabBackup-label">Label (optional)</label>
      <InputGroup
        id="jp-AILabBackup-label"
        name="label"
        type="text"
        placeholder="e.g. before upgrade"
        maxLength={200}
        value={label}
        onChange={event => setLabel(event.currentTarget.value)}
      />
      <div className="jp-AILabBackup-row">
        <Button
          type="submit"
          className="jp-mod-styled jp-mod-accept"
          disabled={model.busy}
        >
          Back up now
        </Button>
      </div>
    </form>
  );
}

const PHASES: Record<string, string> = {
  queued: 'Waiting',
  scanning: 'Scanning files',
  archiving: 'Archiving',
  writing: 'Writing',
  extracting: 'Extracting',
  restoring: 'Restoring'
};

function JobView({ model }: { model: BackupModel }): JSX.Element | null {
  const job = model.job;
  if (model.activity === 'uploading') {
    return (
      <section className="jp-AILabBackup-section" aria-label="Upload">
        <div className="jp-AILabBackup-jobTitle">Uploading…</div>
        <ProgressBar fraction={null} label="Uploading" />
      </section>
    );
  }
  if (!job) {
    return model.restoreHint ? <RestoreHint model={model} /> : null;
  }
  if (job.state === 'failed') {
    return (
      <div className="jp-AILabBackup-error" role="alert">
        {capitalize(job.kind)} failed: {job.error || 'no reason given.'}
      </div>
    );
  }
  if (job.state === 'succeeded') {
    return job.kind === 'restore' && model.restoreHint ? (
      <RestoreHint model={model} />
    ) : null;
  }
  return (
    <section
      className="jp-AILabBackup-section"
      aria-label={`${capitalize(job.kind)} in progress`}
    >
      <div className="jp-AILabBackup-jobTitle">
        {capitalize(job.kind)}: {phaseText(job)}
      </div>
      <ProgressBar fraction={fraction(job)} label={`${job.kind} progress`} />
      <div className="jp-AILabBackup-muted">{progressText(job)}</div>
    </section>
  );
}

function RestoreHint({ model }: { model: BackupModel }): JSX.Element {
  return (
    <div className="jp-AILabBackup-warning jp-AILabBackup-hint" role="status">
      <span>{model.restoreHint}</span>
      <Button
        minimal
        small
        title="Dismiss"
        aria-label="Dismiss the restore hint"
        onClick={() => model.dismissRestoreHint()}
      >
        <closeIcon.react tag="span" elementSize="normal" />
      </Button>
    </div>
  );
}

/** A themed progress bar; `fraction` null means indeterminate. */
function ProgressBar({
  fraction,
  label
}: {
  fraction: number | null;
  label: string;
}): JSX.Element {
  const percent = fraction === null ? null : Math.round(fraction * 100);
  return (
    <div
      className={
        'jp-AILabBackup-progress' +
        (percent === null ? ' jp-mod-indeterminate' : '')
      }
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={percent ?? undefined}
    >
      <div
        className="jp-AILabBackup-progress-fill"
        style={percent === null ? undefined : { width: `${percent}%` }}
      />
    </div>
  );
}

function fraction(job: IJob): number | null {
  const p = job.progress;
  if (!p) {
    return null;
  }
  if (p.total_bytes > 0) {
    return Math.min(1, p.done_bytes / p.total_bytes);
  }
  if (p.total_files > 0) {
    return Math.min(1, p.done_files / p.total_files);
  }
  return null;
}

function phaseText(job: IJob): string {
  if (job.state === 'queued') {
    return 'waiting';
  }
  const phase = job.progress?.phase ?? '';
  return (PHASES[phase] ?? (phase || 'running')).toLowerCase();
}

function progressText(job: IJob): string {
  const p = job.progress;
  if (!p) {
    return '';
  }
  const parts: string[] = [];
  if (p.total_bytes > 0) {
    parts.push(`${formatBytes(p.done_bytes)} of ${formatBytes(p.total_bytes)}`);
  }
  if (p.total_files > 0) {
    parts.push(`${p.done_files} of ${p.total_files} files`);
  }
  return parts.join(', ');
}

/** Native file drag and drop on the whole panel. */
function useFileDrop(onFile: (file: File) => void): {
  over: boolean;
  handlers: React.HTMLAttributes<HTMLElement>;
} {
  const [over, setOver] = useState(false);
  const hasFiles = (event: React.DragEvent): boolean =>
    Array.from(event.dataTransfer.types).includes('Files');
  const handlers: React.HTMLAttributes<HTMLElement> = {
    onDragEnter: event => {
      if (hasFiles(event)) {
        event.preventDefault();
        setOver(true);
      }
    },
    onDragOver: event => {
      if (hasFiles(event)) {
        event.preventDefault();
        event.stopPropagation();
        event.dataTransfer.dropEffect = 'copy';
      }
    },
    onDragLeave: event => {
      if (!event.currentTarget.contains(event.relatedTarget as Node)) {
        setOver(false);
      }
    },
    onDrop: event => {
      if (hasFiles(event)) {
        event.preventDefault();
        event.stopPropagation();
        setOver(false);
        const file = event.dataTransfer.files[0];
        if (file) {
          onFile(file);
        }
      }
    }
  };
  return { over, handlers };
}

function UploadZone({
  model,
  over
}: {
  model: BackupModel;
  over: boolean;
}): JSX.Element {
  const input = useRef<HTMLInputElement>(null);
  return (
    <section
      className={'jp-AILabBackup-drop' + (over ? ' jp-mod-dropTarget' : '')}
      aria-label="Upload a backup"
    >
      <button
        type="button"
        className="jp-AILabBackup-action"
        disabled={model.busy}
        onClick={() => input.current?.click()}
      >
        <fileUploadIcon.react tag="span" elementSize="normal" />
        Upload a backup…
      </button>
      <span className="jp-AILabBackup-muted">
        or drop a backup file (.tar.zst, .tar.gz) on this panel
      </span>
      <input
        ref={input}
        type="file"
        accept={ACCEPT}
        hidden
        aria-hidden="true"
        tabIndex={-1}
        onChange={event => {
          const file = event.currentTarget.files?.[0];
          if (file) {
            void model.upload(file);
          }
          event.currentTarget.value = '';
        }}
      />
    </section>
  );
}

function BackupList({ model }: { model: BackupModel }): JSX.Element {
  if (model.backups.length === 0) {
    return (
      <section className="jp-AILabBackup-section" aria-label="Backups">
        <p className="jp-AILabBackup-muted">
          {model.status && !model.loadError ? 'No backups yet.' : ''}
        </p>
      </section>
    );
  }
  return (
    <section aria-label="Backups">
      <ul className="jp-AILabBackup-list">
        {model.backups.map(backup => (
          <BackupItem key={backup.id} backup={backup} model={model} />
        ))}
      </ul>
    </section>
  );
}

function BackupItem({
  backup,
  model
}: {
  backup: IBackup;
  model: BackupModel;
}): JSX.Element {
  const name = backup.label || 'Unlabelled backup';
  const created = new Date(backup.created);
  return (
    <li className="jp-AILabBackup-item">
      <div className="jp-AILabBackup-itemHead">
        <span className="jp-AILabBackup-itemLabel" title={backup.id}>
          {name}
        </span>
        <time dateTime={backup.created} title={backup.created}>
          {isNaN(created.getTime()) ? backup.created : created.toLocaleString()}
        </time>
      </div>
      <div className="jp-AILabBackup-muted">
        {formatBytes(backup.size_bytes)} · {backup.file_count} files
        {backup.total_bytes
          ? ` · ${formatBytes(backup.total_bytes)} unpacked`
          : ''}
      </div>
      <div className="jp-AILabBackup-actions">
        <button
          type="button"
          className="jp-AILabBackup-action"
          disabled={model.busy}
          aria-label={`Restore ${name}`}
          title="Restore this backup into the notebooks folder"
          onClick={() => void confirmRestore(model, backup)}
        >
          Restore…
        </button>
        <a
          className="jp-AILabBackup-action"
          href={model.client.downloadUrl(backup.id)}
          download
          aria-label={`Download ${name}`}
          title="Download the archive"
        >
          Download
        </a>
        <button
          type="button"
          className="jp-AILabBackup-action jp-mod-danger"
          disabled={model.busy}
          aria-label={`Delete ${name}`}
          title="Delete this backup"
          onClick={() => void confirmDelete(model, backup)}
        >
          Delete
        </button>
      </div>
    </li>
  );
}

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

/** Dialog body: choose merge or replace; shows what will change. */
class RestoreBody
  extends ReactWidget
  implements Dialog.IBodyWidget<RestoreMode>
{
  constructor(private readonly _backup: IBackup) {
    super();
    this.addClass('jp-AILabBackup-restoreDialog');
  }

  getValue(): RestoreMode {
    return this._mode;
  }

  render(): JSX.Element {
    const b = this._backup;
    const option = (mode: RestoreMode, text: string): JSX.Element => (
      <label className="jp-AILabBackup-radio">
        <input
          type="radio"
          name="ailab-backup-restore-mode"
          value={mode}
          checked={this._mode === mode}
          onChange={() => {
            this._mode = mode;
            this.update();
          }}
        />
        <span>
          <strong>{text}</strong> — {RESTORE_EFFECTS[mode]}
        </span>
      </label>
    );
    return (
      <div>
        <p>
          Restore {title(b)} from {new Date(b.created).toLocaleString()} (
          {b.file_count} files, {formatBytes(b.total_bytes || b.size_bytes)})
          into the notebooks folder.
        </p>
        <fieldset className="jp-AILabBackup-fieldset">
          <legend>How</legend>
          {option('merge', 'Merge')}
          {option('replace', 'Replace')}
        </fieldset>
        {this._mode === 'replace' && (
          <p className="jp-AILabBackup-inaccessible">
            Replace removes every file that is not in this backup, including
            notebooks created after it. Unsaved changes in open notebooks are
            lost.
          </p>
        )}
        <p className="jp-AILabBackup-muted">
          A Secure Configuration Storage in the backup is restored too: restart
          the kernels that use it afterwards. Notebooks open in JupyterLab keep
          their old content until reloaded from disk.
        </p>
      </div>
    );
  }

  private _mode: RestoreMode = 'merge';
}

async function confirmRestore(
  model: BackupModel,
  backup: IBackup
): Promise<void> {
  const result = await showDialog<RestoreMode>({
    title: 'Restore backup',
    body: new RestoreBody(backup),
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Restore' })],
    focusNodeSelector: 'input[value="merge"]'
  });
  if (result.button.accept && result.value) {
    await model.restore(backup, result.value);
  }
}

async function confirmDelete(
  model: BackupModel,
  backup: IBackup
): Promise<void> {
  const result = await showDialog({
    title: 'Delete backup',
    body:
      `Delete the backup ${title(backup)} from ` +
      `${new Date(backup.created).toLocaleString()}? This cannot be undone.`,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
  });
  if (result.button.accept) {
    await model.remove(backup);
  }
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
