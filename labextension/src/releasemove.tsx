/**
 * Moving to a new AI-Lab release: "Back up before upgrading", and, when the
 * status offers it, "Bring my work into this release" with a preview of its
 * categories (the server's dry run) before it starts.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Button, ReactWidget } from '@jupyterlab/ui-components';
import React, { useEffect, useState } from 'react';

import {
  BackupClient,
  IReleaseMoveItem,
  IReleaseMovePlan,
  ReleaseMoveCategory,
  describeError
} from './client';
import { BackupModel } from './model';

/** The categories of a release move, in the order they are shown. */
export const MOVE_CATEGORIES: [ReleaseMoveCategory, string][] = [
  ['scs', 'Secure Configuration Storage: brought back'],
  ['brought_back', 'Yours: brought back'],
  ['overwritten', 'Yours: replace the file here'],
  ['kept_both', 'Changed by you and by the new release: both kept'],
  ['left_to_release', 'Unchanged defaults: left as this release ships them'],
  ['added_by_release', 'New in this release: stay']
];
const MAX_LISTED = 300;

/** The offer (when the status has one) and the before-upgrade button. */
export function ReleaseMoveView({
  model
}: {
  model: BackupModel;
}): JSX.Element {
  const move = model.status?.release?.move ?? null;
  return (
    <section
      className="jp-AILabBackup-section jp-AILabBackup-release"
      aria-label="AI-Lab release"
    >
      {move && (
        <div className="jp-AILabBackup-releaseOffer" role="note">
          <p>{move.message}</p>
          <Button
            className="jp-AILabBackup-releaseMove"
            disabled={model.busy}
            onClick={() => void confirmReleaseMove(model, move.backup_id)}
          >
            Bring my work into this release…
          </Button>
        </div>
      )}
      <Button
        minimal
        small
        className="jp-AILabBackup-beforeUpgrade"
        title="Back up now, labelled 'Before upgrading' with the running release"
        disabled={model.busy}
        onClick={() => void model.backupBeforeUpgrade()}
      >
        Back up before upgrading
      </Button>
    </section>
  );
}

/** The dialog's body: the preview, by category. */
class MovePreview extends ReactWidget {
  constructor(
    readonly client: BackupClient,
    readonly backupId: string
  ) {
    super();
    this.addClass('jp-AILabBackup-movePreview');
  }

  render(): JSX.Element {
    return <MovePreviewView client={this.client} backupId={this.backupId} />;
  }
}

function MovePreviewView({
  client,
  backupId
}: {
  client: BackupClient;
  backupId: string;
}): JSX.Element {
  const [plan, setPlan] = useState<IReleaseMovePlan | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    client.previewReleaseMove(backupId).then(
      found => live && setPlan(found),
      reason => live && setError(describeError(reason))
    );
    return () => {
      live = false;
    };
  }, [client, backupId]);
  if (error) {
    return (
      <p className="jp-AILabBackup-error" role="alert">
        {error}
      </p>
    );
  }
  if (!plan) {
    return (
      <p className="jp-AILabBackup-muted">
        Comparing with the notebooks folder …
      </p>
    );
  }
  const release = plan.to_release?.name ?? 'this release';
  return (
    <div className="jp-AILabBackup-movePlan">
      <p>
        Into AI-Lab {release}
        {plan.from_release?.name
          ? ` from AI-Lab ${plan.from_release.name}`
          : ''}
        . What you made or changed and the Secure Configuration Storage come
        back; notebooks you did not change stay as this release ships them. A
        safety backup is taken first: “Undo last restore” takes it back.
      </p>
      {MOVE_CATEGORIES.map(([category, title]) => {
        const items = plan[category] ?? [];
        if (!items.length) {
          return null;
        }
        return (
          <section key={category} data-category={category}>
            <h4>
              {title} ({items.length})
            </h4>
            <ul>
              {items.slice(0, MAX_LISTED).map(item => (
                <li key={item.path}>
                  <code>{item.path}</code> {itemNote(item)}
                </li>
              ))}
              {items.length > MAX_LISTED && (
                <li>… and {items.length - MAX_LISTED} more</li>
              )}
            </ul>
          </section>
        );
      })}
      <p className="jp-AILabBackup-muted">
        {plan.unchanged.count} files are the same here already.
      </p>
    </div>
  );
}

function itemNote(item: IReleaseMoveItem): string {
  if (item.beside) {
    return `— the release's version kept as “${item.beside}”`;
  }
  if (item.why) {
    return `(${item.why})`;
  }
  if (item.release_change) {
    return `(${item.release_change} in this release)`;
  }
  return '';
}

/** Show the preview and start the move when confirmed. */
export async function confirmReleaseMove(
  model: BackupModel,
  backupId: string
): Promise<void> {
  const dialog = new Dialog({
    title: 'Bring my work into this release',
    body: new MovePreview(model.client, backupId),
    buttons: [
      Dialog.cancelButton(),
      Dialog.warnButton({ label: 'Bring it in' })
    ]
  });
  dialog.addClass('jp-AILabBackup-restoreHost'); // a larger dialog
  const result = await dialog.launch();
  if (result.button.accept) {
    await model.releaseMove(backupId);
  }
}
