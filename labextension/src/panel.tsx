/**
 * The "Backups" sidebar: a ReactWidget rendering a BackupModel.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import {
  Button,
  HTMLSelect,
  InputGroup,
  closeIcon,
  ReactWidget,
  UseSignal,
  fileUploadIcon,
  refreshIcon,
  undoIcon
} from '@jupyterlab/ui-components';
import React, { useEffect, useRef, useState } from 'react';

import {
  IBackup,
  IJob,
  ISchedule,
  ISettings,
  IStatus,
  SettingsChange,
  formatBytes
} from './client';
import { backupIcon } from './icon';
import { BackupModel, title } from './model';
import {
  CopyAction,
  OffsiteView,
  WhereTag,
  confirmDeleteCopies
} from './offsitePanel';
import { confirmRestore } from './restore';
import { ReleaseMoveView } from './releasemove';
import { UsageView, leftOut } from './usage';
import {
  DEFAULT_DAILY_TIME,
  IScheduleForm,
  SCHEDULE_CHOICES,
  ScheduleChoice,
  describeSpec,
  formOf,
  formatTime,
  specOf
} from './schedule';

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
    this.model.startWatching();
  }

  protected onAfterHide(): void {
    this.model.stopWatching();
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
      <ReleaseMoveView model={model} />
      <BackupForm model={model} />
      <JobView model={model} />
      <OffsiteView model={model} />
      <ScheduleView model={model} />
      <SettingsView model={model} />
      <UsageView model={model} />
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
        {status.mode === 'docker' && status.worker && (
          <>
            <dt>Runs</dt>
            <dd title={status.worker.why} aria-label="Where the work runs">
              {status.worker.in_use
                ? 'next to the data (helper container)'
                : `through the server: ${status.worker.why}`}
            </dd>
          </>
        )}
      </dl>
      {status.store_warning && (
        <div
          className="jp-AILabBackup-error jp-AILabBackup-storeWarning"
          role="alert"
          aria-label="Where the backups are"
        >
          {status.store_warning}
        </div>
      )}
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
  const done =
    model.lastRestore || model.restoreHint ? (
      <RestoreDone model={model} />
    ) : null;
  if (!job || job.state === 'succeeded') {
    return done;
  }
  if (job.state === 'failed') {
    return (
      <>
        <div className="jp-AILabBackup-error" role="alert">
          {capitalize(job.kind)} failed: {job.error || 'no reason given.'}
        </div>
        {done}
      </>
    );
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

/**
 * After a restore: the SCS hint (restart the kernels) and "Undo last
 * restore", until dismissed.
 */
function RestoreDone({ model }: { model: BackupModel }): JSX.Element {
  const done = model.lastRestore;
  const hint = model.restoreHint;
  let text: string;
  if (done?.undone) {
    text = 'The last restore was undone.';
  } else if (done) {
    const what = done.paths?.length
      ? `${done.paths.length === 1 ? done.paths[0] : `${done.paths.length} paths`} restored`
      : 'Restore finished';
    text =
      done.fileCount === null
        ? `${what}.`
        : `${what}: ${done.fileCount} ${done.fileCount === 1 ? 'file' : 'files'}.`;
  } else {
    text = '';
  }
  return (
    <div
      className={
        'jp-AILabBackup-hint ' +
        (hint ? 'jp-AILabBackup-warning' : 'jp-AILabBackup-notice')
      }
      role="status"
    >
      <div className="jp-AILabBackup-hintText">
        {text && <div>{text}</div>}
        {hint && <div>{hint}</div>}
        {done?.safetyBackupId && !done.undone && (
          <div className="jp-AILabBackup-row">
            <button
              type="button"
              className="jp-AILabBackup-action"
              disabled={model.busy}
              title="Put the notebooks folder back as it was before this restore"
              onClick={() => void confirmUndo(model)}
            >
              <undoIcon.react tag="span" elementSize="normal" />
              Undo last restore
            </button>
          </div>
        )}
      </div>
      <Button
        minimal
        small
        title="Dismiss"
        aria-label={
          hint ? 'Dismiss the restore hint' : 'Dismiss the restore message'
        }
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
  return (
    <li className="jp-AILabBackup-item">
      <div className="jp-AILabBackup-itemHead">
        <span className="jp-AILabBackup-itemName">
          <span className="jp-AILabBackup-itemLabel" title={backup.id}>
            {name}
          </span>
          <KindTag kind={backup.kind} />
        </span>
        <time dateTime={backup.created} title={backup.created}>
          {formatTime(backup.created)}
        </time>
      </div>
      <div className="jp-AILabBackup-muted">
        <WhereTag backup={backup} />
        {formatBytes(backup.size_bytes)} · {backup.file_count} files
        {backup.total_bytes
          ? ` · ${formatBytes(backup.total_bytes)} unpacked`
          : ''}
        {leftOut(backup)}
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
        <CopyAction model={model} backup={backup} />
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

/** What the tags of the backup kinds say. */
const KIND_TAGS: Record<string, [string, string]> = {
  safety: [
    'safety',
    'Taken automatically before a restore: "Undo last restore" brings it back'
  ],
  scheduled: ['scheduled', 'Taken by the backup schedule'],
  uploaded: ['uploaded', 'Uploaded from a file']
};

function KindTag({ kind }: { kind: string | undefined }): JSX.Element | null {
  const tag = kind ? KIND_TAGS[kind] : undefined;
  if (!tag) {
    return null;
  }
  return (
    <span className={`jp-AILabBackup-tag jp-mod-${kind}`} title={tag[1]}>
      {tag[0]}
    </span>
  );
}

/** The schedule: what it is, the last and the next run, and a form to set it. */
function ScheduleView({ model }: { model: BackupModel }): JSX.Element | null {
  const schedule = model.schedule;
  if (!schedule) {
    return null;
  }
  return (
    <section
      className="jp-AILabBackup-section jp-AILabBackup-schedule"
      aria-label="Schedule"
    >
      <h3 className="jp-AILabBackup-subtitle">Schedule</h3>
      <dl className="jp-AILabBackup-status">
        <dt>Backs up</dt>
        <dd>{describeSpec(schedule.spec)}</dd>
        <dt>Last run</dt>
        <dd>
          <LastRun schedule={schedule} />
        </dd>
        <dt>Next run</dt>
        <dd>{schedule.enabled ? nextRun(schedule.next) : '–'}</dd>
      </dl>
      {schedule.warning && (
        <div className="jp-AILabBackup-error" role="alert">
          {schedule.warning}
        </div>
      )}
      <ScheduleForm model={model} schedule={schedule} />
    </section>
  );
}

function LastRun({ schedule }: { schedule: ISchedule }): JSX.Element {
  const last = schedule.last;
  if (!last) {
    return <span className="jp-AILabBackup-muted">never</span>;
  }
  const outcome: Record<string, [string, string]> = {
    succeeded: ['succeeded', 'jp-AILabBackup-ok'],
    skipped: ['skipped: nothing changed', 'jp-AILabBackup-muted'],
    failed: ['FAILED', 'jp-AILabBackup-inaccessible']
  };
  const [text, className] = outcome[last.outcome] ?? [last.outcome, ''];
  return (
    <>
      <time dateTime={last.time} title={last.time}>
        {formatTime(last.time)}
      </time>{' '}
      <span
        className={className}
        title={
          last.error ?? last.same_as ?? last.backup_id ?? last.outcome ?? ''
        }
      >
        {text}
      </span>
    </>
  );
}

function nextRun(next: string | null): string {
  if (!next) {
    return '–';
  }
  const when = new Date(next);
  return !isNaN(when.getTime()) && when.getTime() <= Date.now()
    ? 'now (due)'
    : formatTime(next);
}

function ScheduleForm({
  model,
  schedule
}: {
  model: BackupModel;
  schedule: ISchedule;
}): JSX.Element {
  const [form, setForm] = useState<IScheduleForm>(() => formOf(schedule.spec));
  const [error, setError] = useState<string | null>(null);
  // A new schedule from the server (another tab, a refresh) resets the form.
  useEffect(() => {
    setForm(formOf(schedule.spec));
    setError(null);
  }, [schedule.spec]);
  const spec = specOf(form);
  const unchanged = spec === (schedule.spec || 'off');
  const save = (): void => {
    setError(null);
    void model.saveSchedule(spec).then(message => setError(message));
  };
  return (
    <form
      className="jp-AILabBackup-form"
      aria-label="Change the schedule"
      onSubmit={event => {
        event.preventDefault();
        if (!unchanged && spec) {
          save();
        }
      }}
    >
      <label htmlFor="jp-AILabBackup-scheduleChoice">
        Back up automatically
      </label>
      <div className="jp-AILabBackup-row">
        <HTMLSelect
          id="jp-AILabBackup-scheduleChoice"
          name="schedule"
          value={form.choice}
          onChange={event => {
            const choice = event.currentTarget.value as ScheduleChoice;
            setError(null);
            setForm({
              ...form,
              choice,
              time: form.time || DEFAULT_DAILY_TIME,
              text: form.text || schedule.spec
            });
          }}
        >
          {SCHEDULE_CHOICES.map(([value, text]) => (
            <option key={value} value={value}>
              {text}
            </option>
          ))}
        </HTMLSelect>
        {form.choice === 'daily' && (
          <input
            type="time"
            className="jp-AILabBackup-input"
            aria-label="Time of day (UTC)"
            title="Time of day, UTC"
            required
            value={form.time}
            onChange={event => {
              setError(null);
              setForm({ ...form, time: event.currentTarget.value });
            }}
          />
        )}
        <Button
          type="submit"
          small
          className="jp-mod-styled jp-mod-accept"
          disabled={unchanged || !spec || model.savingSchedule}
        >
          Save
        </Button>
      </div>
      {form.choice === 'daily' && (
        <span className="jp-AILabBackup-muted">UTC; now {utcNow()} UTC.</span>
      )}
      {form.choice === 'custom' && (
        <InputGroup
          name="scheduleSpec"
          type="text"
          aria-label="Schedule spec"
          placeholder="every 30m, every 12h, daily 02:30"
          value={form.text}
          onChange={event => {
            setError(null);
            setForm({ ...form, text: event.currentTarget.value });
          }}
        />
      )}
      {error && (
        <div className="jp-AILabBackup-error" role="alert">
          {error}
        </div>
      )}
    </form>
  );
}

/** The form's values, as the server would keep them. */
interface ISettingsForm {
  helperImage: string;
  /** One pattern a line. */
  excludes: string;
  keepLast: string;
}

function settingsForm(settings: ISettings): ISettingsForm {
  return {
    helperImage: settings.helper_image,
    excludes: settings.excludes.join('\n'),
    keepLast: String(settings.keep_last)
  };
}

function patterns(text: string): string[] {
  return text
    .split('\n')
    .map(line => line.trim())
    .filter(line => line);
}

/** What the form changes; only those become kept beside the store. */
function settingsChanges(
  form: ISettingsForm,
  settings: ISettings
): SettingsChange {
  const changes: SettingsChange = {};
  if (form.helperImage !== settings.helper_image) {
    changes.helper_image = form.helperImage;
  }
  if (patterns(form.excludes).join('\n') !== settings.excludes.join('\n')) {
    changes.excludes = patterns(form.excludes);
  }
  if (Number(form.keepLast) !== settings.keep_last) {
    changes.keep_last = Number(form.keepLast);
  }
  return changes;
}

const SETTING_NAMES: Record<string, string> = {
  helper_image: 'helper image',
  excludes: 'left out',
  keep_last: 'retention',
  schedule: 'schedule'
};

/**
 * The settings an AI-Lab user needs (environment variables do not reach the
 * server there): kept beside the store, checked by the server.
 */
function SettingsView({ model }: { model: BackupModel }): JSX.Element | null {
  const settings = model.settings;
  if (!settings) {
    return null;
  }
  return <SettingsForm model={model} settings={settings} />;
}

function SettingsForm({
  model,
  settings
}: {
  model: BackupModel;
  settings: ISettings;
}): JSX.Element {
  const [form, setForm] = useState<ISettingsForm>(() => settingsForm(settings));
  const [error, setError] = useState<string | null>(null);
  const key = JSON.stringify(settingsForm(settings));
  // New settings from the server (another UI, the CLI, a save) reset the form.
  useEffect(() => {
    setForm(settingsForm(settings));
    setError(null);
  }, [key]);
  const changes = settingsChanges(form, settings);
  const unchanged = Object.keys(changes).length === 0;
  const keepValid = /^\d+$/.test(form.keepLast.trim());
  const images = settings.helper_images;
  const kept = Object.keys(SETTING_NAMES)
    .filter(k => (settings.kept as string[]).includes(k))
    .map(k => SETTING_NAMES[k]);
  const edit = (change: Partial<ISettingsForm>): void => {
    setError(null);
    setForm({ ...form, ...change });
  };
  return (
    <section
      className="jp-AILabBackup-section jp-AILabBackup-settings"
      aria-label="Settings"
    >
      <h3 className="jp-AILabBackup-subtitle">Settings</h3>
      <form
        className="jp-AILabBackup-form"
        aria-label="Change the settings"
        onSubmit={event => {
          event.preventDefault();
          if (!unchanged && keepValid) {
            setError(null);
            void model.saveSettings(changes).then(message => setError(message));
          }
        }}
      >
        <label htmlFor="jp-AILabBackup-helperImage">Helper image</label>
        <HTMLSelect
          id="jp-AILabBackup-helperImage"
          name="helperImage"
          value={form.helperImage}
          disabled={images.length < 2}
          onChange={event => edit({ helperImage: event.currentTarget.value })}
        >
          {images.map(image => (
            <option
              key={image.name}
              value={image.name}
              disabled={!image.present}
              title={image.why ?? ''}
            >
              {(image.name || 'automatic') +
                (image.present ? '' : ' (not present)')}
            </option>
          ))}
        </HTMLSelect>
        <label htmlFor="jp-AILabBackup-excludes">
          Leave out of backups (one pattern a line)
        </label>
        <textarea
          id="jp-AILabBackup-excludes"
          name="excludes"
          className="jp-AILabBackup-input jp-AILabBackup-textarea"
          rows={3}
          placeholder="models_cache"
          value={form.excludes}
          onChange={event => edit({ excludes: event.currentTarget.value })}
        />
        <label htmlFor="jp-AILabBackup-keepLast">
          Keep the newest backups (0: all)
        </label>
        <div className="jp-AILabBackup-row">
          <input
            id="jp-AILabBackup-keepLast"
            name="keepLast"
            type="number"
            min={0}
            className="jp-AILabBackup-input"
            value={form.keepLast}
            onChange={event => edit({ keepLast: event.currentTarget.value })}
          />
          <Button
            type="submit"
            small
            className="jp-mod-styled jp-mod-accept"
            disabled={unchanged || !keepValid || model.savingSettings}
          >
            Save settings
          </Button>
        </div>
        <span className="jp-AILabBackup-muted">
          Kept beside the store
          {settings.store ? ` (${settings.store.name})` : ''}:{' '}
          {kept.length ? kept.join(', ') : 'none yet'}. The others come from
          ~/.jupyter/jupyter_server_config.py.
        </span>
        {error && (
          <div className="jp-AILabBackup-error" role="alert">
            {error}
          </div>
        )}
      </form>
    </section>
  );
}

function utcNow(): string {
  return new Date().toISOString().slice(11, 16);
}

/**
 * Ask, then undo the last restore: the server restores the safety backup
 * taken before it, with replace. Used by the sidebar and the command.
 */
export async function confirmUndo(model: BackupModel): Promise<void> {
  const safety = model.newestSafetyBackup;
  const from = safety
    ? ` from the safety backup of ${formatTime(safety.created)}`
    : '';
  const result = await showDialog({
    title: 'Undo last restore',
    body:
      'Put the notebooks folder back exactly as it was before the last ' +
      `restore${from}? Files changed since that restore are replaced or ` +
      'removed. A safety backup of the current state is taken first, so ' +
      'the undo can be undone too.',
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Undo' })]
  });
  if (result.button.accept) {
    await model.undo();
  }
}

async function confirmDelete(
  model: BackupModel,
  backup: IBackup
): Promise<void> {
  if (await confirmDeleteCopies(model, backup)) {
    return; // kept here and off the machine: which copy was asked
  }
  const result = await showDialog({
    title: 'Delete backup',
    body:
      `Delete the backup ${title(backup)} from ` +
      `${formatTime(backup.created)}? This cannot be undone.`,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
  });
  if (result.button.accept) {
    await model.remove(backup);
  }
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
