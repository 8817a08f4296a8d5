import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, InputDialog } from '@jupyterlab/apputils';
import { undoIcon } from '@jupyterlab/ui-components';

import { BackupClient } from './client';
import { backupIcon } from './icon';
import { BackupModel } from './model';
import { BackupPanel, confirmUndo } from './panel';
import reopenPlugin from './reopen';

/** Command ids. */
export namespace CommandIDs {
  export const create = 'ailab-backup:create';
  export const open = 'ailab-backup:open';
  export const undo = 'ailab-backup:undo';
}

const CATEGORY = 'AI-Lab Backup';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'ailab-backup-ext:plugin',
  description:
    'Back up and restore the AI-Lab notebooks and the Secure Configuration Storage.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new BackupModel(
      new BackupClient(app.serviceManager.serverSettings)
    );
    const panel = new BackupPanel(model);
    app.shell.add(panel, 'left', { rank: 850 });
    if (restorer) {
      restorer.add(panel, panel.id);
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Open backups',
      caption: 'Show the Backups sidebar',
      icon: backupIcon,
      execute: () => {
        app.shell.activateById(panel.id);
        panel.focusLabel();
      }
    });

    app.commands.addCommand(CommandIDs.create, {
      label: 'Back up now',
      caption: 'Back up the notebooks and the Secure Configuration Storage',
      icon: backupIcon,
      isEnabled: () => !model.busy,
      execute: async () => {
        const result = await InputDialog.getText({
          title: 'Back up now',
          label: 'Label (optional)',
          placeholder: 'e.g. before upgrade',
          okLabel: 'Back up'
        });
        if (!result.button.accept) {
          return;
        }
        app.shell.activateById(panel.id);
        await model.backup(result.value ?? '');
      }
    });

    app.commands.addCommand(CommandIDs.undo, {
      label: 'Undo last restore',
      caption:
        'Put the notebooks folder back as it was before the last restore ' +
        '(from its safety backup)',
      icon: undoIcon,
      isEnabled: () => !model.busy,
      execute: async () => {
        app.shell.activateById(panel.id);
        await confirmUndo(model);
      }
    });

    model.changed.connect(() => {
      app.commands.notifyCommandChanged(CommandIDs.create);
      app.commands.notifyCommandChanged(CommandIDs.undo);
    });
    // Show restored files in the file browser at once.
    model.jobFinished.connect((_, job) => {
      if (
        (job.kind === 'restore' || job.kind === 'undo') &&
        app.commands.hasCommand('filebrowser:refresh')
      ) {
        void app.commands.execute('filebrowser:refresh');
      }
    });

    if (palette) {
      palette.addItem({ command: CommandIDs.create, category: CATEGORY });
      palette.addItem({ command: CommandIDs.open, category: CATEGORY });
      palette.addItem({ command: CommandIDs.undo, category: CATEGORY });
    }
  }
};

export default [plugin, reopenPlugin];
