/**
 * "In the folder": the size of each top-level folder of the notebooks folder,
 * a switch per folder to leave it out of backups (kept as the excludes
 * setting, beside the store), and an estimate of the next backup's size. The
 * server measures cheaply and caches; this view asks again only when the
 * sidebar's model read new backups or settings (or on "Measure again").
 */
import { Button, refreshIcon } from '@jupyterlab/ui-components';
import React, { useEffect, useState } from 'react';

import {
  IBackup,
  IFolderUsage,
  IUsage,
  describeError,
  formatBytes
} from './client';
import { BackupModel } from './model';

/** What a backup of the list left out on purpose (its excludes), or ''. */
export function leftOut(backup: IBackup): string {
  const excludes = backup.excludes;
  return Array.isArray(excludes) && excludes.length
    ? ` · left out: ${excludes.join(', ')}`
    : '';
}

/** The estimate in one line. */
export function estimateText(usage: IUsage): string {
  const e = usage.estimate;
  const held = `${formatBytes(e.bytes)} in ${e.files} files`;
  const stored =
    e.compressed_bytes === null
      ? ''
      : `, about ${formatBytes(e.compressed_bytes)} stored`;
  return `The next backup would hold ${held}${stored} (an estimate).`;
}

function folderLabel(row: IFolderUsage): string {
  return row.type === 'files' ? '(files at the top)' : `${row.name}/`;
}

export function UsageView({ model }: { model: BackupModel }): JSX.Element {
  const [usage, setUsage] = useState<IUsage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const load = async (
    how: () => Promise<IUsage>,
    after?: () => Promise<void>
  ): Promise<void> => {
    setBusy(true);
    try {
      setUsage(await how());
      setError(null);
      if (after) {
        await after();
      }
    } catch (err) {
      setError(describeError(err));
      if (after) {
        // A refused switch: show the folders as they are.
        void model.client.usage().then(setUsage, () => undefined);
      }
    } finally {
      setBusy(false);
    }
  };

  // Again when the model read new backups or settings (a backup, a restore,
  // a setting changed anywhere): the server answers from its cache otherwise.
  const [seen, setSeen] = useState<unknown[]>([]);
  useEffect(() => {
    const look = (): void => {
      const now = [model.backups, model.settings];
      setSeen(before =>
        before.length === now.length && before.every((v, i) => v === now[i])
          ? before
          : now
      );
    };
    look();
    model.changed.connect(look);
    return () => {
      model.changed.disconnect(look);
    };
  }, [model]);
  useEffect(() => {
    void load(() => model.client.usage());
  }, [seen]);

  const toggle = (row: IFolderUsage, backUp: boolean): void => {
    // Shown switched at once; the server's answer (or its refusal) follows.
    setUsage(
      before =>
        before && {
          ...before,
          folders: before.folders.map(r =>
            r.name === row.name
              ? { ...r, excluded: !backUp, excluded_by: backUp ? null : r.name }
              : r
          )
        }
    );
    void load(
      () => model.client.setFolderExcluded(row.name, !backUp),
      () => model.refresh() // the settings show the new excludes
    );
  };

  return (
    <section
      className="jp-AILabBackup-section jp-AILabBackup-usage"
      aria-label="In the folder"
      aria-busy={busy}
    >
      <h3 className="jp-AILabBackup-subtitle">
        In the folder
        <Button
          minimal
          small
          title="Measure the folders again"
          aria-label="Measure again"
          disabled={busy}
          onClick={() => void load(() => model.client.usage(true))}
        >
          <refreshIcon.react tag="span" elementSize="normal" />
        </Button>
      </h3>
      {error && (
        <div className="jp-AILabBackup-error" role="alert">
          {error}
        </div>
      )}
      {!usage && !error && <p>Measuring…</p>}
      {usage && (
        <>
          <table className="jp-AILabBackup-usageTable">
            <thead>
              <tr>
                <th scope="col">Back up</th>
                <th scope="col">Folder</th>
                <th scope="col">Size</th>
                <th scope="col">Files</th>
              </tr>
            </thead>
            <tbody>
              {usage.folders.map(row => {
                const byGlob = row.excluded && row.excluded_by !== row.name;
                const why = byGlob
                  ? `Left out by the exclude pattern '${row.excluded_by}': change it in the settings.`
                  : row.left_out_files
                    ? `${row.left_out_files} files (${formatBytes(row.left_out_bytes)}) in it are left out by the excludes.`
                    : undefined;
                return (
                  <tr key={row.name} data-folder={row.name} title={why}>
                    <td>
                      {row.type === 'folder' && (
                        <input
                          type="checkbox"
                          aria-label={`Back up ${row.name}`}
                          checked={!row.excluded}
                          disabled={busy || byGlob}
                          onChange={e => toggle(row, e.target.checked)}
                        />
                      )}
                    </td>
                    <td
                      className={row.excluded ? 'jp-AILabBackup-excluded' : ''}
                    >
                      {folderLabel(row)}
                    </td>
                    <td>{formatBytes(row.bytes)}</td>
                    <td>{row.files}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <p className="jp-AILabBackup-estimate" title={usage.estimate.note}>
            {estimateText(usage)}
          </p>
        </>
      )}
    </section>
  );
}
