/**
 * The schedule's spec ('every 6h', 'every 30m', 'daily 02:30' in UTC, 'off')
 * as the sidebar's form shows it, and back. The server checks every spec.
 */

/** The choices of the form's select. */
export type ScheduleChoice = 'off' | 'hourly' | 'every6h' | 'daily' | 'custom';

export interface IScheduleForm {
  choice: ScheduleChoice;
  /** 'HH:MM' (UTC), for 'daily'. */
  time: string;
  /** The spec as typed, for 'custom'. */
  text: string;
}

export const SCHEDULE_CHOICES: [ScheduleChoice, string][] = [
  ['off', 'Off'],
  ['hourly', 'Every hour'],
  ['every6h', 'Every 6 hours'],
  ['daily', 'Daily at…'],
  ['custom', 'Other…']
];

export const DEFAULT_DAILY_TIME = '02:00';

const EVERY = /^every\s+(\d+)\s*(m|min|minutes?|h|hours?)$/;
const DAILY = /^daily\s+(\d{1,2}):(\d{2})$/;

/** The form that shows a spec of the server. */
export function formOf(spec: string | null | undefined): IScheduleForm {
  const raw = (spec ?? '').trim();
  const text = raw.toLowerCase();
  const form: IScheduleForm = { choice: 'custom', time: '', text: raw };
  if (['', 'off', 'none'].includes(text)) {
    return { ...form, choice: 'off', text: '' };
  }
  const every = EVERY.exec(text);
  if (every) {
    const minutes = Number(every[1]) * (every[2].startsWith('m') ? 1 : 60);
    if (minutes === 60) {
      return { ...form, choice: 'hourly' };
    }
    if (minutes === 360) {
      return { ...form, choice: 'every6h' };
    }
    return form;
  }
  const daily = DAILY.exec(text);
  if (daily && Number(daily[1]) < 24 && Number(daily[2]) < 60) {
    return { ...form, choice: 'daily', time: `${pad(daily[1])}:${daily[2]}` };
  }
  return form;
}

/** The spec to send for a form. */
export function specOf(form: IScheduleForm): string {
  switch (form.choice) {
    case 'off':
      return 'off';
    case 'hourly':
      return 'every 1h';
    case 'every6h':
      return 'every 6h';
    case 'daily':
      return `daily ${form.time || DEFAULT_DAILY_TIME}`;
    default:
      return form.text.trim();
  }
}

/** A spec in words: "Every 6 hours", "Daily at 02:30 UTC", "Off". */
export function describeSpec(spec: string | null | undefined): string {
  const text = (spec ?? '').trim().toLowerCase();
  if (['', 'off', 'none'].includes(text)) {
    return 'Off';
  }
  const every = EVERY.exec(text);
  if (every) {
    const n = Number(every[1]);
    const unit = every[2].startsWith('m') ? 'minute' : 'hour';
    return n === 1 ? `Every ${unit}` : `Every ${n} ${unit}s`;
  }
  const daily = DAILY.exec(text);
  if (daily) {
    return `Daily at ${pad(daily[1])}:${daily[2]} UTC`;
  }
  return spec ?? '';
}

/**
 * An ISO time of the server as both UIs show times: in UTC, labelled,
 * '2026-12-01 21:30:05 UTC' (the schedule is in UTC, and the notebook panel's
 * kernel cannot know the browser's zone); '–' for none.
 */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) {
    return '–';
  }
  const date = new Date(iso);
  if (isNaN(date.getTime())) {
    return iso;
  }
  return `${date.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

function pad(hours: string): string {
  return hours.padStart(2, '0');
}
