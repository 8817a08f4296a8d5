/**
 * Open documents after a restore: a plugin of its own (the sidebar may be
 * closed). It asks the server's cheap change token (GET /changes) while
 * JupyterLab is open; when a restore or undo ended well (started from the
 * sidebar, the notebook panel or REST), it reads the job's result (the
 * restored files as contents paths) and reverts the open documents among
 * them to the restored content, so that the next save does not write the old
 * content over the restored file ("changed on disk" asks the user, who may
 * not connect it with the restore). A document with unsaved changes is not
 * reverted without asking. After a restore of the Secure Configuration
 * Storage it offers to restart the kernels of open notebooks, which hold the
 * old file open.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { BackupClient, IJob, IRestored, describeError } from './client';
import {
  REOPEN_INTERVAL_MS,
  RestoreWatcher,
  openContexts,
  reloadRestored
} from './reopenlogic';

async function askKeepOrTake(path: string): Promise<boolean> {
  const result = await showDialog({
    title: 'A restored file has unsaved changes here',
    body:
      `"${path}" was restored from a backup, but holds changes here that are ` +
      'not saved. Keep your version (saving it then overwrites the restored ' +
      'file), or take the restored one (your unsaved changes are dropped)?',
    buttons: [
      Dialog.cancelButton({ label: 'Keep mine' }),
      Dialog.warnButton({ label: 'Take the restored one' })
    ]
  });
  return result.button.accept;
}

/** Offer to restart the kernels of open notebooks (after an SCS restore). */
export function offerKernelRestart(app: JupyterFrontEnd): void {
  const sessions = Array.from(openContexts(app).values()).filter(
    context => context.sessionContext?.session?.kernel
  );
  if (!sessions.length) {
    return;
  }
  const names = sessions.map(context => context.path).join(', ');
  Notification.warning(
    'The Secure Configuration Storage was restored. Kernels that had it open ' +
      `still use the old one: restart the kernels of ${names}?`,
    {
      autoClose: false,
      actions: [
        {
          label: 'Restart kernels',
          caption: 'Restart the kernels of the open notebooks',
          callback: () => {
            for (const context of sessions) {
              void context.sessionContext.restartKernel();
            }
          }
        }
      ]
    }
  );
}

const reopenPlugin: JupyterFrontEndPlugin<void> = {
  id: 'ailab-backup-ext:reopen',
  description:
    'After a restore, reloads the open documents whose files were restored.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const client = new BackupClient(app.serviceManager.serverSettings);
    const watcher = new RestoreWatcher(
      () => client.getChanges(),
      async jobId => {
        const job: IJob = await client.getJob(jobId);
        const restored = (job.result?.restored ?? null) as IRestored | null;
        if (!restored) {
          return; // Jupyter does not show the restored folder
        }
        const reverted = await reloadRestored(app, restored, askKeepOrTake);
        if (reverted.length) {
          Notification.info(
            `Reloaded from the restored files: ${reverted.join(', ')}.`,
            { autoClose: 8000 }
          );
        }
        if (restored.scs) {
          offerKernelRestart(app);
        }
      }
    );
    const tick = async (): Promise<void> => {
      try {
        await watcher.check();
      } catch (error) {
        // The server away or the extension missing: try again later, quietly.
        console.debug(
          'ailab-backup: reopen check failed',
          describeError(error)
        );
      }
      window.setTimeout(() => void tick(), REOPEN_INTERVAL_MS);
    };
    void app.restored.then(() => tick());
  }
};

export default reopenPlugin;
