/**
 * What the sidebar shows of the second store (AILabBackup.copy_to, e.g. S3):
 * where each backup is kept, pending copies, and the encryption key. Pure
 * functions of the server's answers (unit-tested); the views are in
 * offsitePanel.tsx.
 */
import {
  IBackup,
  IEncryption,
  INewKey,
  IStatus,
  IStore,
  Where
} from './client';

/** The text and tooltip of each place. */
export const WHERE_TAGS: Record<Where, [string, string]> = {
  both: ['here + off the machine', 'Kept on this machine and off it'],
  here: ['only here', 'Kept only on this machine'],
  'off the machine': [
    'only off the machine',
    'Kept only off the machine: a restore reads it from there'
  ]
};

/** The tag of a backup's place; null without a second store. */
export function whereTag(
  backup: IBackup
): { where: Where; text: string; tip: string; pending: boolean } | null {
  const where = backup.where;
  if (!where || !(where in WHERE_TAGS)) {
    return null;
  }
  const [text, tip] = WHERE_TAGS[where];
  return { where, text, tip, pending: backup.copy === 'pending' };
}

/** What the sidebar says about the copies off the machine. */
export interface IOffsite {
  /** The second store; null when the store itself is off the machine. */
  second: IStore | null;
  encryption: IEncryption | null;
  pending: number;
  /** A red-worthy problem: the key cannot open backups, a copy failed. */
  problem: string | null;
  /** A key may be made (none exists, and it would be used). */
  canMakeKey: boolean;
  /** Backups that a copy (one action) would copy. */
  onlyHere: IBackup[];
}

/** null when nothing is kept off the machine (no copy_to, no S3 store). */
export function offsiteOf(
  status: IStatus | null,
  backups: IBackup[]
): IOffsite | null {
  const store = status?.store;
  if (!store) {
    return null;
  }
  const second = store.copy_to ?? null;
  const off = second ?? (store.type === 's3' ? store : null);
  if (!off) {
    return null;
  }
  const encryption = off.encryption ?? null;
  let problem: string | null = null;
  if (encryption?.error) {
    problem = encryption.error;
  } else if (
    encryption &&
    !encryption.public_key &&
    backups.some(b => b.encrypted)
  ) {
    problem =
      'Backups off the machine are encrypted, but the key is missing: put ' +
      `the key you saved into ${encryption.key_file} (mode 0600). Without ` +
      'it they cannot be restored.';
  } else if (second && store.copy_error) {
    problem = `The last copy failed: ${store.copy_error}`;
  }
  return {
    second,
    encryption,
    pending: second ? (store.copies_pending ?? []).length : 0,
    problem,
    canMakeKey:
      !!encryption &&
      !encryption.public_key &&
      !encryption.error &&
      encryption.mode !== 'off',
    onlyHere: second ? backups.filter(b => b.where === 'here') : []
  };
}

/** The name of the downloaded key file: as the server names its own. */
export const KEY_FILE_NAME = 'ailab-backup-age.key';

/**
 * The key file offered for download: the format the server keeps, which
 * `age -d -i FILE` reads (lines starting with '#' are comments).
 */
export function keyFileText(key: INewKey): string {
  return (
    `# ailab-backup age key; public key: ${key.public_key}\n` +
    '# Without this key, nothing encrypted with it can be restored.\n' +
    `${key.private_key}\n`
  );
}
