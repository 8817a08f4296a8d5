import { LabIcon } from '@jupyterlab/ui-components';

import backupSvgstr from '../style/icons/backup.svg';

/** Icon of the Backups sidebar: an archive box with an arrow. */
export const backupIcon = new LabIcon({
  name: 'ailab-backup:backup',
  svgstr: backupSvgstr
});
