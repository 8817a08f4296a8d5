/**
 * REST client for the ailab_backup_ext server extension (base URL
 * `<baseUrl>/ailab/backup`). Every request of the sidebar goes through here.
 *
 * `ServerConnection.makeRequest` adds the token or XSRF header, so the
 * requests work with AI-Lab's password login as well as with a token.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Where the backups come from: a Docker volume, a bind mount or a folder. */
export interface ISource {
  type: string;
  name: string;
  found_by?: string;
}

/** Where the backups are kept. */
export interface IStore {
  type: string;
  name: string;
  /** s3: the endpoint ('AWS S3' or the configured URL). */
  endpoint?: string;
  /** s3: the age key that encrypts what is kept in S3. */
  encryption?: IEncryption | null;
  /** The second store (AILabBackup.copy_to), when one is set. */
  copy_to?: IStore;
  /** Backups whose copy to the second store waits for a retry. */
  copies_pending?: string[];
  /** Why the last copy to the second store failed. */
  copy_error?: string | null;
}

/** The encryption of a store off the machine (no secret in it). */
export interface IEncryption {
  /** 'auto' (when a key exists), 'on' or 'off'. */
  mode: string;
  /** Where the server keeps the private key (never in the notebooks folder). */
  key_file: string;
  /** The key's public half (age1...); null or missing: no key. */
  public_key?: string | null;
  /** Set when the key file cannot be read. */
  error?: string;
}

/** The answer of POST /key: the private key, shown this once. */
export interface INewKey {
  private_key: string;
  public_key: string;
  key_file: string;
  /** "Save this key ...: without it, nothing ... can be restored". */
  message: string;
}

/** Where a backup is kept, with a second store. */
export type Where = 'here' | 'off the machine' | 'both';

export interface IBackup {
  id: string;
  /** ISO 8601, UTC. */
  created: string;
  label: string;
  source: ISource;
  /** Size of the archive. */
  size_bytes: number;
  file_count: number;
  /** Size of the files in the archive, uncompressed. */
  total_bytes: number;
  compression: string;
  kind: string;
  /** With a second store (copy_to): where it is kept. */
  where?: Where;
  /** 'pending': its copy to the second store waits for a retry. */
  copy?: 'pending';
  /** A copy of it is encrypted (reading it needs the key). */
  encrypted?: boolean;
  [key: string]: unknown;
}

export interface IProgress {
  phase: string;
  done_bytes: number;
  total_bytes: number;
  done_files: number;
  total_files: number;
}

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed';

export interface IJob {
  id: string;
  kind: string;
  state: JobState;
  progress: IProgress | null;
  backup_id: string | null;
  /** A restore's result carries `hint` (restart the kernels using the SCS). */
  result: { hint?: string | null; [key: string]: unknown } | null;
  error: string | null;
  started: string | null;
  finished: string | null;
}

export interface IStatus {
  mode: 'docker' | 'local';
  source: ISource | null;
  store: IStore | null;
  docker: { reachable: boolean; version?: string | null; url?: string | null };
  hint: string | null;
  job: IJob | null;
  /** The backup schedule (missing on older servers, null when unreadable). */
  schedule?: ISchedule | null;
  /**
   * Set when the backups are kept where they do not survive (e.g. the
   * container's own filesystem): where they are and what deletes them.
   */
  store_warning?: string | null;
  /**
   * Whether backups and restores run in a helper container next to the data
   * (faster), and why or why not (null until the source and store are known).
   */
  worker?: { in_use: boolean; why: string } | null;
  /** The running AI-Lab release and the release move offered, if any. */
  release?: { running: IRelease | null; move: IReleaseMove | null } | null;
}

/** An AI-Lab release, as a backup records it (null: not recorded). */
export interface IRelease {
  name: string | null;
  image: string | null;
  image_id?: string | null;
  defaults_digest?: string | null;
  defaults_count?: number | null;
  unchanged_defaults?: number;
}

/** "Bring my work into this release" offered for a backup of another release. */
export interface IReleaseMove {
  backup_id: string;
  from: IRelease;
  message: string;
}

/** One file of a release move's plan. */
export interface IReleaseMoveItem extends IPlanItem {
  why?: string;
  beside?: string;
  release_change?: 'unchanged' | 'updated' | 'removed';
  action?: 'added' | 'overwritten';
}

export type ReleaseMoveCategory =
  | 'scs'
  | 'brought_back'
  | 'overwritten'
  | 'kept_both'
  | 'left_to_release'
  | 'added_by_release';

/** The preview of a release move: every file of the backup in one category. */
export type IReleaseMovePlan = Record<
  ReleaseMoveCategory,
  IReleaseMoveItem[]
> & {
  backup_id: string;
  mode: 'release-move';
  from_release: IRelease | null;
  to_release: IRelease | null;
  unchanged: { count: number; bytes: number; items: IPlanItem[] };
  counts: Record<string, number>;
};

/** The settings keys a UI can change. */
export type SettingKey = 'helper_image' | 'excludes' | 'keep_last' | 'schedule';

/** An image the server offers for helper containers. */
export interface IHelperImage {
  /** '' means: the configuration's choice. */
  name: string;
  /** Present in Docker: only present images can be chosen. */
  present: boolean;
  why?: string;
}

/** The settings in effect (GET/PUT /settings). */
export interface ISettings {
  helper_image: string;
  excludes: string[];
  keep_last: number;
  schedule: string;
  /** The keys set from a UI or the CLI, kept beside the store. */
  kept: SettingKey[];
  /** The values of the configuration (AILabBackup). */
  configured: Partial<Record<SettingKey, unknown>>;
  helper_images: IHelperImage[];
  store?: IStore;
}

/** What to change; null goes back to the configuration's value. */
export type SettingsChange = Partial<{
  helper_image: string | null;
  excludes: string[] | null;
  keep_last: number | null;
  schedule: string | null;
}>;

/** The cheap change token (GET /changes). */
export interface IChanges {
  token: string;
  job: string | null;
  /** The newest finished restore or undo job of the server (null: none yet). */
  last_restore?: {
    id: string;
    state: JobState;
    finished: string | null;
  } | null;
}

/** What a restore restored, as Jupyter's contents paths (the job's result). */
export interface IRestored {
  /** The restored files (only the first ones, unless `complete`). */
  paths: string[];
  complete: boolean;
  /** The restored scope: the chosen paths, or [''] for everything. */
  within: string[];
  /** The Secure Configuration Storage was restored. */
  scs: boolean;
}

/** One top-level entry of the notebooks folder (GET /usage). */
export interface IFolderUsage {
  /** '' for the files lying directly in the notebooks folder. */
  name: string;
  type: 'folder' | 'files';
  bytes: number;
  files: number;
  /** Left out of backups by an exclude pattern (`excluded_by`). */
  excluded: boolean;
  excluded_by: string | null;
  left_out_bytes: number;
  left_out_files: number;
}

/** What is in the notebooks folder, and the next backup's estimate. */
export interface IUsage {
  folders: IFolderUsage[];
  total: { bytes: number; files: number };
  excludes: string[];
  estimate: {
    bytes: number;
    files: number;
    /** Guessed from the newest backup's ratio; null before the first. */
    compressed_bytes: number | null;
    ratio: number | null;
    based_on: string | null;
    note: string;
  };
  computed: string;
  cached: boolean;
  how: string;
}

export type RestoreMode = 'merge' | 'replace';

/** Kinds of backups in the list. */
export type BackupKind = 'manual' | 'uploaded' | 'safety' | 'scheduled';

/** One path in a restore plan. */
export interface IPlanItem {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  /** Size in the backup (removed items: the current size). */
  size: number;
  /** Size now, for overwritten items. */
  current_size?: number;
  /** For an overwritten notebook: the cells a restore would add, remove, change. */
  notebook?: {
    cells_added: number;
    cells_removed: number;
    cells_changed: number;
  } | null;
}

/** The answer of a dry run: what a restore would change. */
export interface IPlan {
  backup_id: string;
  mode: RestoreMode;
  /** The chosen paths, or null for everything. */
  paths?: string[] | null;
  added: IPlanItem[];
  overwritten: IPlanItem[];
  /** replace mode only. */
  removed: IPlanItem[];
  /** items: with added and overwritten, every path of the backup. */
  unchanged: { count: number; bytes: number; items?: IPlanItem[] };
}

/** The last scheduled run. */
export interface IScheduleRun {
  outcome: 'succeeded' | 'skipped' | 'failed';
  /** ISO 8601, UTC. */
  time: string;
  backup_id?: string | null;
  /** A skipped run: nothing changed since this backup. */
  same_as?: string | null;
  error?: string | null;
}

export interface ISchedule {
  /** 'every 6h', 'every 30m', 'daily 02:30' (UTC) or 'off'. */
  spec: string;
  enabled: boolean;
  last: IScheduleRun | null;
  /** ISO 8601, UTC; null when off. */
  next: string | null;
  /** Set when the last scheduled run failed. */
  warning: string | null;
}

/** Options of a restore: which files, and whether only to preview. */
export interface IRestoreOptions {
  /** Restore only these files or folders of the backup; omitted: everything. */
  paths?: string[] | null;
}

/** Path of the REST API below the server's base URL. */
export const API_PATH = 'ailab/backup';

/** True when a job will not change any more. */
export function isFinished(job: IJob): boolean {
  return job.state === 'succeeded' || job.state === 'failed';
}

/**
 * Build the URL of an endpoint: `apiUrl(base, 'jobs', id)` gives
 * `<base>/ailab/backup/jobs/<id>`. Each part is URL-encoded.
 */
export function apiUrl(baseUrl: string, ...parts: string[]): string {
  return URLExt.join(
    baseUrl,
    API_PATH,
    ...parts.map(part => encodeURIComponent(part))
  );
}

/**
 * The message to show for a failed response: the server's `{"message": ...}`
 * when there is one, else a plain JSON `error`/`reason`, else a short text
 * body, else the HTTP status.
 */
export function errorMessage(
  status: number,
  statusText: string,
  body: string
): string {
  const text = body.trim();
  if (text) {
    try {
      const data = JSON.parse(text);
      if (data && typeof data === 'object') {
        for (const key of ['message', 'error', 'reason']) {
          const value = (data as Record<string, unknown>)[key];
          if (typeof value === 'string' && value.trim()) {
            return value.trim();
          }
        }
      }
    } catch {
      // Not JSON: an HTML error page or plain text.
      if (!text.startsWith('<') && text.length <= 500) {
        return text;
      }
    }
  }
  if (status === 413) {
    return 'The file is too large for the server.';
  }
  return `Request failed: ${status} ${statusText}`.trim();
}

/** An error response of the REST API, with the server's message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The parsed JSON body, if any (a 409 carries `job_id`). */
    readonly data: Record<string, unknown> | null = null
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The running job's id on a 409 "a job is already running". */
  get jobId(): string | null {
    const id = this.data?.['job_id'];
    return typeof id === 'string' ? id : null;
  }
}

export class BackupClient {
  constructor(
    readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /** URL of an endpoint, see `apiUrl`. */
  url(...parts: string[]): string {
    return apiUrl(this.settings.baseUrl, ...parts);
  }

  /**
   * URL to download a backup's archive with a plain link (the browser sends
   * the login cookie).
   */
  downloadUrl(id: string): string {
    return this.url(id, 'download');
  }

  listBackups(): Promise<IBackup[]> {
    return this.request<{ backups: IBackup[] }>([]).then(r => r.backups);
  }

  getBackup(id: string): Promise<IBackup> {
    return this.request<IBackup>([id]);
  }

  status(): Promise<IStatus> {
    return this.request<IStatus>(['status']);
  }

  /**
   * Start a backup; resolves with the queued job. `beforeUpgrade`: labelled
   * "Before upgrading (AI-Lab RELEASE)" by the server.
   */
  createBackup(label = '', beforeUpgrade = false): Promise<IJob> {
    const body = beforeUpgrade ? { label, before_upgrade: true } : { label };
    return this.request<{ job: IJob }>([], {
      method: 'POST',
      body: JSON.stringify(body)
    }).then(r => r.job);
  }

  /** Preview "Bring my work into this release" for a backup (a dry run). */
  previewReleaseMove(id: string): Promise<IReleaseMovePlan> {
    return this.request<IReleaseMovePlan>([id, 'restore'], {
      method: 'POST',
      body: JSON.stringify({ mode: 'release-move', dry_run: true })
    });
  }

  /** Start "Bring my work into this release"; resolves with the queued job. */
  startReleaseMove(id: string): Promise<IJob> {
    return this.request<{ job: IJob }>([id, 'restore'], {
      method: 'POST',
      body: JSON.stringify({ mode: 'release-move' })
    }).then(r => r.job);
  }

  /**
   * Start a restore (of everything, or only of `options.paths`); resolves
   * with the queued job. Its result names the safety backup taken first.
   */
  async restoreBackup(
    id: string,
    mode: RestoreMode,
    options: IRestoreOptions = {}
  ): Promise<IJob> {
    const body = JSON.stringify(restoreBody(mode, options.paths, false));
    const answer = await this.request<{ job: IJob }>([id, 'restore'], {
      method: 'POST',
      body
    });
    return answer.job;
  }

  /**
   * Preview a restore (a dry run, nothing changes): what would be added,
   * overwritten, removed (replace only) and left unchanged.
   */
  async previewRestore(
    id: string,
    mode: RestoreMode,
    options: IRestoreOptions = {}
  ): Promise<IPlan> {
    const body = JSON.stringify(restoreBody(mode, options.paths, true));
    const plan = await this.request<IPlan>([id, 'restore'], {
      method: 'POST',
      body
    });
    // Older servers or odd answers: never crash the dialog on a missing list.
    return {
      ...plan,
      added: plan?.added ?? [],
      overwritten: plan?.overwritten ?? [],
      removed: plan?.removed ?? [],
      unchanged: plan?.unchanged ?? { count: 0, bytes: 0 }
    };
  }

  /**
   * Undo the last restore (restores the newest safety backup with replace);
   * resolves with the queued job. 404 when there is nothing to undo.
   */
  undoLastRestore(): Promise<IJob> {
    return this.request<{ job: IJob }>(['undo'], { method: 'POST' }).then(
      r => r.job
    );
  }

  getSchedule(): Promise<ISchedule> {
    return this.request<ISchedule>(['schedule']);
  }

  /** Set the schedule; 400 (ApiError with the server's message) if unknown. */
  setSchedule(spec: string): Promise<ISchedule> {
    return this.request<ISchedule>(['schedule'], {
      method: 'PUT',
      body: JSON.stringify({ spec })
    });
  }

  getSettings(): Promise<ISettings> {
    return this.request<ISettings>(['settings']);
  }

  /** Change settings; 400 (ApiError with the server's message) if refused. */
  setSettings(changes: SettingsChange): Promise<ISettings> {
    return this.request<ISettings>(['settings'], {
      method: 'PUT',
      body: JSON.stringify(changes)
    });
  }

  /** The change token: cheap to poll (the server makes no helper container). */
  getChanges(): Promise<IChanges> {
    return this.request<IChanges>(['changes']);
  }

  /**
   * Delete a backup; with a second store, `where` deletes only the copy
   * 'here' or the one 'off' the machine.
   */
  async deleteBackup(id: string, where?: 'here' | 'off'): Promise<void> {
    await this.request<null>([id], { method: 'DELETE' }, where && { where });
  }

  /** Copy a backup held here to the second store; resolves with the job. */
  copyBackup(id: string): Promise<IJob> {
    return this.request<{ job: IJob }>([id, 'copy'], { method: 'POST' }).then(
      r => r.job
    );
  }

  /** Copy every backup only held here (pending ones too: a retry). */
  copyAll(): Promise<IJob> {
    return this.request<{ job: IJob }>(['copies'], { method: 'POST' }).then(
      r => r.job
    );
  }

  /**
   * Make the age key that encrypts backups off the machine. The answer holds
   * the private key this once; a key that exists already is kept (400).
   */
  makeKey(): Promise<INewKey> {
    return this.request<INewKey>(['key'], { method: 'POST' });
  }

  /** What each top-level folder holds (cached by the server). */
  usage(refresh = false): Promise<IUsage> {
    return this.request<IUsage>(
      ['usage'],
      {},
      refresh ? { refresh: '1' } : undefined
    );
  }

  /** Leave a top-level folder out of backups, or back it up again. */
  setFolderExcluded(folder: string, excluded: boolean): Promise<IUsage> {
    return this.request<IUsage>(['usage'], {
      method: 'PUT',
      body: JSON.stringify({ folder, excluded })
    });
  }

  getJob(id: string): Promise<IJob> {
    return this.request<IJob>(['jobs', id]);
  }

  listJobs(): Promise<IJob[]> {
    return this.request<{ jobs: IJob[] }>(['jobs']).then(r => r.jobs);
  }

  /** Upload an archive (raw bytes as the body); resolves with the new backup. */
  uploadBackup(file: Blob): Promise<IBackup> {
    return this.request<IBackup>(['upload'], {
      method: 'POST',
      body: file,
      headers: { 'Content-Type': 'application/octet-stream' }
    });
  }

  /**
   * Send a request and parse the JSON answer. Rejects with `ApiError`
   * (server's message) on 4xx/5xx, or with `ServerConnection.NetworkError`
   * when the server cannot be reached.
   */
  async request<T>(
    parts: string[],
    init: RequestInit = {},
    query?: Record<string, string>
  ): Promise<T> {
    const url =
      this.url(...parts) + (query ? URLExt.objectToQueryString(query) : '');
    const response = await ServerConnection.makeRequest(
      url,
      init,
      this.settings
    );
    const body = await response.text();
    if (!response.ok) {
      let data: Record<string, unknown> | null = null;
      try {
        const parsed = JSON.parse(body);
        data = parsed && typeof parsed === 'object' ? parsed : null;
      } catch {
        data = null;
      }
      throw new ApiError(
        response.status,
        errorMessage(response.status, response.statusText, body),
        data
      );
    }
    if (!body) {
      return null as T;
    }
    try {
      return JSON.parse(body) as T;
    } catch {
      throw new ApiError(
        response.status,
        `The server sent an answer that is not JSON (${response.status}).`
      );
    }
  }
}

/** The JSON body of a restore or its preview; `paths` only when chosen. */
export function restoreBody(
  mode: RestoreMode,
  paths: string[] | null | undefined,
  dryRun: boolean
): { mode: RestoreMode; paths?: string[]; dry_run?: true } {
  const body: { mode: RestoreMode; paths?: string[]; dry_run?: true } = {
    mode
  };
  if (paths) {
    if (paths.length === 0) {
      // The server refuses an empty list (it never means "everything").
      throw new Error('Choose at least one file or folder to restore.');
    }
    body.paths = paths;
  }
  if (dryRun) {
    body.dry_run = true;
  }
  return body;
}

/** A readable message for any error thrown by the client. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    return error.message;
  }
  if (error instanceof ServerConnection.NetworkError) {
    return `The Jupyter server cannot be reached: ${error.message}`;
  }
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}

/** Human-readable size: 1536 → "1.5 KB". */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes)) {
    return '–';
  }
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${units[unit]}`;
}
