import { describe, expect, it } from '@jest/globals';
import { WaitingUsers } from '../src/waiting-users.js';

describe('WaitingUsers', () => {
  it('admits up to the service cap, and says which cap refused', () => {
    const waiting = new WaitingUsers({ maxWaiting: 3, maxWaitingPerSource: 2 });
    expect(waiting.admit('10.0.0.1')).toBeUndefined();
    expect(waiting.admit('10.0.0.1')).toBeUndefined();
    expect(waiting.admit('10.0.0.1')).toBe('sourceFull');
    expect(waiting.admit('10.0.0.2')).toBeUndefined();
    expect(waiting.admit('10.0.0.3')).toBe('serviceFull');
    expect(waiting.size).toBe(3);
  });

  it('gives a released place back, to the same source or another', () => {
    const waiting = new WaitingUsers({ maxWaiting: 2, maxWaitingPerSource: 1 });
    expect(waiting.admit('a')).toBeUndefined();
    expect(waiting.admit('a')).toBe('sourceFull');
    waiting.release('a');
    expect(waiting.size).toBe(0);
    expect(waiting.admit('a')).toBeUndefined();
    expect(waiting.admit('b')).toBeUndefined();
    expect(waiting.admit('c')).toBe('serviceFull');
  });

  it('ignores a release for a source that has nobody waiting', () => {
    const waiting = new WaitingUsers({ maxWaiting: 1, maxWaitingPerSource: 1 });
    waiting.release('nobody');
    expect(waiting.size).toBe(0);
    expect(waiting.admit('x')).toBeUndefined();
  });
});
