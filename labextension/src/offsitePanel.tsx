/**
 * The sidebar's parts for the second store (AILabBackup.copy_to, e.g. S3):
 * the "Off the machine" section, each backup's place, its copy action, the
 * choice of which copy to delete, and making the encryption key.
 *
 * The private key is shown once, in a modal dialog, until the user ticks
 * that it is saved; it is offered as a download made in the browser (a Blob:
 * no URL of the server serves it again) and to copy. It never goes into a
 * notification (JupyterLab keeps those in its list), the model or a log.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import React, { useEffect, useRef, useState } from 'react';

import { IBackup, INewKey, describeError } from './client';
import { BackupModel, title } from './model';
import { KEY_FILE_NAME, keyFileText, offsiteOf, whereTag } from './offsite';
import { formatTime } from './schedule';

/** A backup's place (here, off the machine, both) and "copy pending". */
export function WhereTag({ backup }: { backup: IBackup }): JSX.Element | null {
  const tag = whereTag(backup);
  if (!tag) {
    return null;
  }
  return (
    <span className="jp-AILabBackup-whereTags">
      <span
        className={`jp-AILabBackup-where jp-mod-${tag.where === 'both' ? 'both' : 'one'}`}
        title={tag.tip}
        aria-label={`Kept: ${tag.where}`}
      >
        {tag.text}
      </span>
      {tag.pending && (
        <span
          className="jp-AILabBackup-where jp-mod-pending"
          title="The copy off the machine failed; the server retries it, or press Copy all"
        >
          copy pending
        </span>
      )}
    </span>
  );
}

/** "Copy off the machine" for a backup held only here. */
export function CopyAction({
  model,
  backup
}: {
  model: BackupModel;
  backup: IBackup;
}): JSX.Element | null {
  if (backup.where !== 'here') {
    return null;
  }
  const name = backup.label || 'Unlabelled backup';
  return (
    <button
      type="button"
      className="jp-AILabBackup-action"
      disabled={model.busy}
      aria-label={`Copy ${name} off the machine`}
      title="Copy this backup to the second store, and check the copy"
      onClick={() => void model.copy(backup)}
    >
      {backup.copy === 'pending' ? 'Retry copy' : 'Copy off the machine'}
    </button>
  );
}

/** The second store, pending copies, the key, and "copy all" in one action. */
export function OffsiteView({
  model
}: {
  model: BackupModel;
}): JSX.Element | null {
  const offsite = offsiteOf(model.status, model.backups);
  if (!offsite) {
    return null;
  }
  const { second, encryption } = offsite;
  const only = offsite.onlyHere.length;
  return (
    <section className="jp-AILabBackup-section" aria-label="Off the machine">
      <h3 className="jp-AILabBackup-subtitle">Off the machine</h3>
      <dl className="jp-AILabBackup-status">
        {second && (
          <>
            <dt>Copy to</dt>
            <dd title={second.endpoint ?? ''}>
              {second.name} ({second.type})
            </dd>
          </>
        )}
        <dt>Encryption</dt>
        <dd>
          {encryption?.public_key ? (
            <span
              className="jp-AILabBackup-ok"
              title={`${encryption.public_key}, key in ${encryption.key_file}`}
            >
              on (key {encryption.public_key.slice(0, 12)}…)
            </span>
          ) : encryption?.mode === 'off' ? (
            'off'
          ) : (
            <span className="jp-AILabBackup-inaccessible">no key</span>
          )}
        </dd>
        {offsite.pending > 0 && (
          <>
            <dt>Pending</dt>
            <dd className="jp-AILabBackup-inaccessible">
              {offsite.pending} {offsite.pending === 1 ? 'copy' : 'copies'}{' '}
              (retried by the server)
            </dd>
          </>
        )}
      </dl>
      {offsite.problem && (
        <div
          className="jp-AILabBackup-error"
          role="alert"
          aria-label="Off the machine problem"
        >
          {offsite.problem}
        </div>
      )}
      <div className="jp-AILabBackup-actions">
        {second && (
          <button
            type="button"
            className="jp-AILabBackup-action"
            disabled={model.busy || only === 0}
            title="Copy every backup held only here to the second store"
            onClick={() => void model.copy(null)}
          >
            {offsite.pending > 0
              ? 'Retry pending copies'
              : `Copy ${only} older ${only === 1 ? 'backup' : 'backups'} off the machine`}
          </button>
        )}
        {offsite.canMakeKey && (
          <button
            type="button"
            className="jp-AILabBackup-action"
            disabled={model.busy}
            title="Make the key that encrypts the backups kept off the machine"
            onClick={() => void makeKey(model)}
          >
            Make encryption key…
          </button>
        )}
      </div>
    </section>
  );
}

/**
 * Ask which copy to delete when a backup is kept here and off the machine;
 * resolves true when it handled the deletion (or its cancel).
 */
export async function confirmDeleteCopies(
  model: BackupModel,
  backup: IBackup
): Promise<boolean> {
  if (backup.where !== 'both') {
    return false;
  }
  const result = await showDialog({
    title: 'Delete backup',
    body:
      `The backup ${title(backup)} from ${formatTime(backup.created)} is ` +
      'kept here and off the machine. Delete only the copy here (a restore ' +
      'then reads the one off the machine), or both? This cannot be undone.',
    buttons: [
      Dialog.cancelButton(),
      Dialog.warnButton({ label: 'Delete here only', actions: ['here'] }),
      Dialog.warnButton({ label: 'Delete both' })
    ]
  });
  if (result.button.accept) {
    await model.remove(
      backup,
      result.button.actions.includes('here') ? 'here' : undefined
    );
  }
  return true;
}

/** Make the key: explain, make it, show it once until it is saved. */
export async function makeKey(model: BackupModel): Promise<void> {
  const ask = await showDialog({
    title: 'Make an encryption key',
    body:
      'Backups copied off the machine are then encrypted on this machine ' +
      'with it, so the storage provider can read nothing. You must save the ' +
      'key somewhere safe, away from this machine: without it, nothing ' +
      'encrypted with it can be restored, by anyone. It is shown only once.',
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Make key' })]
  });
  if (!ask.button.accept) {
    return;
  }
  let key: INewKey | null;
  try {
    key = await model.client.makeKey();
  } catch (error) {
    await showErrorMessage('No key was made', describeError(error));
    return;
  }
  const tick = { saved: false };
  let done = false;
  while (!done) {
    const shown = await showDialog({
      title: 'Save this key — without it nothing can be restored',
      body: <KeyBody keyInfo={key} tick={tick} />,
      buttons: [Dialog.okButton({ label: 'I have saved the key' })],
      hasClose: false
    });
    // Enter presses the button even while it is disabled: the tick decides.
    done = shown.button.accept && tick.saved;
    if (!done) {
      // Closed with Escape: the key is not shown again after this.
      const again = await showDialog({
        title: 'The key is not saved yet',
        body:
          'Without the key, the backups encrypted with it cannot be ' +
          'restored. It is not shown again once you leave.',
        buttons: [
          Dialog.warnButton({
            label: 'Leave without saving',
            actions: ['leave']
          }),
          Dialog.okButton({ label: 'Show the key again' })
        ]
      });
      done = again.button.actions.includes('leave');
    }
  }
  key = null; // gone from this page's memory once the dialogs are closed
  await model.refresh();
}

/** The key, its download and copy, and the tick that enables the button. */
function KeyBody({
  keyInfo,
  tick
}: {
  keyInfo: INewKey;
  tick: { saved: boolean };
}): JSX.Element {
  const [ticked, setTicked] = useState(tick.saved);
  const [copied, setCopied] = useState(false);
  const node = useRef<HTMLDivElement>(null);
  useEffect(() => {
    // The dialog's own button: usable only once the key is saved.
    const accept = node.current
      ?.closest('.jp-Dialog-content')
      ?.querySelector<HTMLButtonElement>('.jp-Dialog-footer .jp-mod-accept');
    if (accept) {
      accept.disabled = !ticked;
    }
  }, [ticked]);
  const download = (): void => {
    const blob = new Blob([keyFileText(keyInfo)], { type: 'text/plain' });
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = KEY_FILE_NAME;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };
  return (
    <div className="jp-AILabBackup-keyBody" ref={node}>
      <p className="jp-AILabBackup-keyWarning">
        {keyInfo.message} It is shown only this once.
      </p>
      <textarea
        readOnly
        rows={2}
        aria-label="The private key"
        value={keyInfo.private_key}
        onFocus={event => event.currentTarget.select()}
      />
      <div className="jp-AILabBackup-actions">
        <button
          type="button"
          className="jp-AILabBackup-action"
          onClick={download}
        >
          Download the key file
        </button>
        <button
          type="button"
          className="jp-AILabBackup-action"
          onClick={() =>
            void navigator.clipboard
              ?.writeText(keyInfo.private_key)
              .then(() => setCopied(true))
          }
        >
          {copied ? 'Copied' : 'Copy the key'}
        </button>
      </div>
      <p className="jp-AILabBackup-muted">
        The server keeps it only in {keyInfo.key_file} (never in the notebooks
        folder or a backup). Public key: {keyInfo.public_key}
      </p>
      <label>
        <input
          type="checkbox"
          name="keySaved"
          checked={ticked}
          onChange={event => {
            tick.saved = event.currentTarget.checked;
            setTicked(tick.saved);
          }}
        />{' '}
        I have saved this key somewhere safe, away from this machine
      </label>
    </div>
  );
}
