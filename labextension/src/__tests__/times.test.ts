/**
 * Times in the sidebar: UTC, labelled, whatever the browser's zone
 * (`npm test`), the same presentation as the notebook panel's.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { formatTime } from '../schedule';

describe('formatTime', () => {
  test('shows UTC, labelled, in a browser of another zone', () => {
    const zone = process.env.TZ;
    process.env.TZ = 'America/New_York';
    try {
      // The zone is in effect: a local rendering would say 16:30.
      assert.equal(new Date('2026-12-01T21:30:05Z').getHours(), 16);
      assert.equal(
        formatTime('2026-12-01T21:30:05Z'),
        '2026-12-01 21:30:05 UTC'
      );
      assert.equal(
        formatTime('2026-12-01T23:30:05+01:00'),
        '2026-12-01 22:30:05 UTC'
      );
    } finally {
      process.env.TZ = zone;
    }
  });

  test('no time, and text that is no time', () => {
    assert.equal(formatTime(null), '–');
    assert.equal(formatTime(''), '–');
    assert.equal(formatTime('soon'), 'soon');
  });
});
