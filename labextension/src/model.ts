/**
 * State of the Backups sidebar: status, list of backups and the job that
 * runs, with polling and notifications. The React view only renders it.
 */
import { Notification } from '@jupyterlab/apputils';
import { ISignal, Signal } from '@lumino/signaling';

import {
  ApiError,
  BackupClient,
  IBackup,
  IJob,
  ISchedule,
  ISettings,
  IStatus,
  RestoreMode,
  SettingsChange,
  describeError,
  isFinished
} from './client';
import { describeSpec, formatTime } from './schedule';

/** How often a running job is polled. */
export const POLL_INTERVAL_MS = 500;

/**
 * How often the sidebar asks whether anything changed elsewhere (the notebook
 * panel, REST, the CLI, the schedule). The answer costs the server no helper
 * container; only a change makes the sidebar read the list again.
 */
export const WATCH_INTERVAL_MS = 3000;

/**
 * Notification options: a toast that stays until dismissed. (Without
 * `autoClose`, JupyterLab only adds a notification to the list, silently.)
 */
const STICKY = { autoClose: false } as const;

/** What the panel is busy with, besides a server job. */
export type Activity = 'idle' | 'loading' | 'uploading' | 'deleting';

/** The last restore (or undo) that ended well, while its message shows. */
export interface IRestoreDone {
  /** The restored backup. */
  backupId: string | null;
  /** The safety backup taken first: the last restore can be undone. */
  safetyBackupId: string | null;
  /** This was an undo (of the restore that took this safety backup). */
  undone: string | null;
  fileCount: number | null;
  /** The chosen paths, null for everything. */
  paths: string[] | null;
}

export class BackupModel {
  constructor(readonly client: BackupClient = new BackupClient()) {}

  status: IStatus | null = null;
  backups: IBackup[] = [];
  /** The job being followed (running, or the last one that ended). */
  job: IJob | null = null;
  activity: Activity = 'idle';
  /** Error of the last refresh (the server or the extension unreachable). */
  loadError: string | null = null;
  /** Hint from the last successful restore (restart the kernels). */
  restoreHint: string | null = null;
  /** The last restore that ended well in this session, until dismissed. */
  lastRestore: IRestoreDone | null = null;
  /** The backup schedule, from the status (null: unknown). */
  schedule: ISchedule | null = null;
  /** A schedule is being saved. */
  savingSchedule = false;
  /** The settings kept beside the store (null: not read yet, or unreadable). */
  settings: ISettings | null = null;
  /** Settings are being saved. */
  savingSettings = false;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A followed job ended (succeeded or failed). */
  get jobFinished(): ISignal<this, IJob> {
    return this._jobFinished;
  }

  /** True while a job of the server runs, or an upload or delete. */
  get busy(): boolean {
    return (
      this.jobRunning ||
      this.activity === 'uploading' ||
      this.activity === 'deleting'
    );
  }

  get jobRunning(): boolean {
    return this.job !== null && !isFinished(this.job);
  }

  /** Reload status and backups; follow a job that is already running. */
  async refresh(): Promise<void> {
    if (this.activity === 'loading') {
      this._refreshAgain = true;
      return;
    }
    this._setActivity('loading');
    try {
      // The change token is read before what it stands for: a change made
      // while (or just after) the list is read then differs from it, so the
      // next look reads again. Read after, such a change would be missed.
      const changes = await settle(this.client.getChanges());
      // Independent: a failing list must not hide the status, and back.
      const [status, backups, settings] = await Promise.all([
        settle(this.client.status()),
        settle(this.client.listBackups()),
        settle(this.client.getSettings())
      ]);
      if (settings.ok) {
        this.settings = settings.value;
      }
      const errors: string[] = [];
      if (status.ok) {
        this.status = status.value;
        this.schedule = status.value.schedule ?? null;
        const job = status.value.job;
        if (job && !isFinished(job) && !this.jobRunning) {
          this._follow(job);
        }
      } else {
        errors.push(status.error);
      }
      if (backups.ok) {
        this.backups = backups.value;
      } else {
        errors.push(backups.error);
      }
      this.loadError = errors.length
        ? Array.from(new Set(errors)).join(' ')
        : null;
      // Not read whole (e.g. a slow server): the old token stays, so the
      // next look reads again instead of showing a stale list.
      if (changes.ok && !this.loadError) {
        this._token = changes.value.token;
      }
    } finally {
      this._setActivity('idle');
    }
    if (this._refreshAgain) {
      this._refreshAgain = false;
      await this.refresh();
    }
  }

  /** Start a backup; resolves once it is started (not finished). */
  async backup(label: string): Promise<void> {
    await this._start(() => this.client.createBackup(label.trim()));
  }

  /** Start a restore of everything, or only of `paths` (never empty). */
  async restore(
    backup: IBackup,
    mode: RestoreMode,
    paths: string[] | null = null
  ): Promise<void> {
    await this._start(() => {
      this.restoreHint = null;
      this.lastRestore = null;
      return this.client.restoreBackup(backup.id, mode, { paths });
    });
  }

  /** Start "Bring my work into this release" for a backup of another release. */
  async releaseMove(backupId: string): Promise<void> {
    await this._start(() => {
      this.restoreHint = null;
      this.lastRestore = null;
      return this.client.startReleaseMove(backupId);
    });
  }

  /** Start a backup labelled "Before upgrading" (with the running release). */
  async backupBeforeUpgrade(): Promise<void> {
    await this._start(() => this.client.createBackup('', true));
  }

  /** Undo the last restore (the server restores its safety backup). */
  async undo(): Promise<void> {
    await this._start(() => {
      this.restoreHint = null;
      this.lastRestore = null;
      return this.client.undoLastRestore();
    });
  }

  /** Copy a backup (null: every one only held here) to the second store. */
  async copy(backup: IBackup | null): Promise<void> {
    await this._start(() =>
      backup ? this.client.copyBackup(backup.id) : this.client.copyAll()
    );
  }

  /** The newest safety backup: what an undo brings back. */
  get newestSafetyBackup(): IBackup | null {
    return this.backups.find(b => b.kind === 'safety') ?? null;
  }

  /**
   * Set the schedule. Resolves with the server's message when it refuses
   * the spec (shown at the form), else with null.
   */
  async saveSchedule(spec: string): Promise<string | null> {
    this.savingSchedule = true;
    this._changed.emit();
    try {
      this.schedule = await this.client.setSchedule(spec);
      Notification.success(
        `Schedule saved: ${describeSpec(this.schedule.spec)}.`,
        { autoClose: 4000 }
      );
      return null;
    } catch (error) {
      if (error instanceof ApiError && error.status === 400) {
        return error.message;
      }
      Notification.error(
        `Saving the schedule failed: ${describeError(error)}`,
        STICKY
      );
      return describeError(error);
    } finally {
      this.savingSchedule = false;
      this._changed.emit();
    }
  }

  /**
   * Change settings. Resolves with the server's message when it refuses them
   * (shown at the form; nothing was changed), else with null.
   */
  async saveSettings(changes: SettingsChange): Promise<string | null> {
    this.savingSettings = true;
    this._changed.emit();
    try {
      this.settings = await this.client.setSettings(changes);
      this.schedule = this.schedule
        ? { ...this.schedule, spec: this.settings.schedule }
        : this.schedule;
      Notification.success('Settings saved beside the store.', {
        autoClose: 4000
      });
      return null;
    } catch (error) {
      return describeError(error);
    } finally {
      this.savingSettings = false;
      this._changed.emit();
    }
  }

  /**
   * Watch for changes made elsewhere while the sidebar is shown: poll the
   * cheap change token, read everything again only when it changed.
   */
  startWatching(): void {
    if (this._watch === null) {
      this._watch = window.setInterval(
        () => void this._lookForChanges(),
        WATCH_INTERVAL_MS
      );
    }
  }

  stopWatching(): void {
    if (this._watch !== null) {
      window.clearInterval(this._watch);
      this._watch = null;
    }
  }

  private async _lookForChanges(): Promise<void> {
    if (this._looking || this.activity === 'loading') {
      return;
    }
    this._looking = true;
    try {
      const { token } = await this.client.getChanges();
      if (token !== this._token) {
        await this.refresh(); // takes the token it read first as seen
      }
    } catch {
      // The server is away for a moment; the next look tries again.
    } finally {
      this._looking = false;
    }
  }

  /** Delete a backup (with a second store, `where`: only one copy). */
  async remove(backup: IBackup, where?: 'here' | 'off'): Promise<void> {
    this._setActivity('deleting');
    try {
      await this.client.deleteBackup(backup.id, where);
      const which = where
        ? where === 'here'
          ? 'the copy here of '
          : 'the copy off the machine of '
        : '';
      Notification.success(`Deleted ${which}backup ${title(backup)}.`, {
        autoClose: 4000
      });
    } catch (error) {
      Notification.error(`Delete failed: ${describeError(error)}`, STICKY);
    } finally {
      this._setActivity('idle');
    }
    await this.refresh();
  }

  async upload(file: File): Promise<void> {
    if (this.busy) {
      Notification.warning('Wait until the running job has finished.', {
        autoClose: 5000
      });
      return;
    }
    this._setActivity('uploading');
    try {
      const backup = await this.client.uploadBackup(file);
      Notification.success(
        `Uploaded ${file.name} as backup ${title(backup)}.`,
        { autoClose: 5000 }
      );
    } catch (error) {
      Notification.error(
        `Upload of ${file.name} failed: ${describeError(error)}`,
        STICKY
      );
    } finally {
      this._setActivity('idle');
    }
    await this.refresh();
  }

  /** Hide the message of the last restore (its hint and undo button). */
  dismissRestoreHint(): void {
    this.restoreHint = null;
    this.lastRestore = null;
    this._changed.emit();
  }

  dispose(): void {
    this._stopPolling();
    this.stopWatching();
    Signal.clearData(this);
  }

  private async _start(start: () => Promise<IJob>): Promise<void> {
    if (this.busy) {
      Notification.warning('Wait until the running job has finished.', {
        autoClose: 5000
      });
      return;
    }
    try {
      this._follow(await start());
    } catch (error) {
      Notification.error(describeError(error), STICKY);
      // 409: another job runs (started elsewhere); show its progress.
      if (error instanceof ApiError && error.status === 409 && error.jobId) {
        try {
          this._follow(await this.client.getJob(error.jobId));
        } catch {
          // The status refresh below still shows what is going on.
        }
      }
    }
  }

  private _follow(job: IJob): void {
    this._stopPolling();
    this.job = job;
    this._changed.emit();
    this._schedulePoll();
  }

  private _schedulePoll(): void {
    if (!this.job || isFinished(this.job)) {
      if (this.job) {
        void this._finished(this.job);
      }
      return;
    }
    this._timer = window.setTimeout(() => void this._poll(), POLL_INTERVAL_MS);
  }

  private async _poll(): Promise<void> {
    this._timer = null;
    const current = this.job;
    if (!current) {
      return;
    }
    try {
      const job = await this.client.getJob(current.id);
      if (this.job?.id !== current.id) {
        return; // Another job is followed now.
      }
      this.job = job;
      this._pollFailures = 0;
      this._changed.emit();
    } catch (error) {
      // Keep polling through short outages; give up after ~30 s.
      if (++this._pollFailures > 60) {
        this.job = {
          ...current,
          state: 'failed',
          error: `Lost track of the job: ${describeError(error)}`
        };
        this._pollFailures = 0;
        this._changed.emit();
      }
    }
    this._schedulePoll();
  }

  private async _finished(job: IJob): Promise<void> {
    this._jobFinished.emit(job);
    const what = job.kind.charAt(0).toUpperCase() + job.kind.slice(1);
    if (job.state === 'succeeded') {
      const hint =
        typeof job.result?.hint === 'string' ? job.result.hint : null;
      if (job.kind === 'restore' || job.kind === 'undo') {
        // The server sets `hint` when the SCS was restored: kernels that
        // hold it open must be restarted.
        this.restoreHint = hint;
        const result = job.result ?? {};
        const files = result.file_count;
        const text = (key: string): string | null =>
          typeof result[key] === 'string' ? (result[key] as string) : null;
        const paths = Array.isArray(result.paths)
          ? (result.paths as unknown[]).filter(
              (p): p is string => typeof p === 'string'
            )
          : null;
        this.lastRestore = {
          backupId: text('backup_id') ?? job.backup_id,
          safetyBackupId: text('safety_backup_id'),
          undone: text('undone'),
          fileCount: typeof files === 'number' ? files : null,
          paths
        };
        const what = this.lastRestore.undone ? 'Undo' : 'Restore';
        const done =
          typeof files === 'number'
            ? `${what} finished: ${files} files restored.`
            : `${what} finished.`;
        Notification.success(hint ? `${done} ${hint}` : done, {
          autoClose: hint ? false : 5000
        });
      } else {
        Notification.success(`${what} finished.`, { autoClose: 5000 });
      }
    } else {
      Notification.error(
        `${what} failed: ${job.error || 'the server gave no reason.'}`,
        { autoClose: false }
      );
    }
    await this.refresh();
  }

  private _stopPolling(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _setActivity(activity: Activity): void {
    this.activity = activity;
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _jobFinished = new Signal<this, IJob>(this);
  private _timer: number | null = null;
  private _pollFailures = 0;
  private _refreshAgain = false;
  private _watch: number | null = null;
  private _looking = false;
  private _token: string | null = null;
}

/** A promise's outcome, without rejecting. */
async function settle<T>(
  promise: Promise<T>
): Promise<{ ok: true; value: T } | { ok: false; error: string }> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, error: describeError(error) };
  }
}

/** Short name of a backup for messages: its label, else its time (UTC). */
export function title(backup: IBackup): string {
  return backup.label ? `"${backup.label}"` : formatTime(backup.created);
}
