import { describe, expect, it } from '@jest/globals';
import { AdmittedUsers, type Admission } from '../src/relay/admitted-users.js';

/** Admits a user from `source`, recording its displacement in `displaced`; the admission, or the refusal. */
function admit(users: AdmittedUsers, source: string, displaced: string[] = []): Admission | string {
  return users.admit(source, () => displaced.push(source));
}

describe('AdmittedUsers', () => {
  it('admits up to the per-source cap and the service cap, and says which refused', () => {
    const users = new AdmittedUsers({ maxWaiting: 3, maxWaitingPerSource: 2, maxTunnelsPerSource: 0 });
    expect(typeof admit(users, '10.0.0.1')).toBe('object');
    expect(typeof admit(users, '10.0.0.1')).toBe('object');
    expect(admit(users, '10.0.0.1')).toBe('sourceFull');
    expect(typeof admit(users, '10.0.0.2')).toBe('object');
    expect(users.waiting).toBe(3);
    // Full: 10.0.0.3 takes the place of 10.0.0.1's newest (it holds two, one more than the newcomer's none and one).
    const displaced: string[] = [];
    expect(typeof admit(users, '10.0.0.3', displaced)).toBe('object');
    // Now every address holds one: nobody gives a place up to a fourth.
    expect(admit(users, '10.0.0.4', displaced)).toBe('serviceFull');
    expect(users.waiting).toBe(3);
  });

  it('lets one address fill the list, and on a full list gives the place of its newest user to another address', () => {
    const users = new AdmittedUsers({ maxWaiting: 4, maxWaitingPerSource: 4, maxTunnelsPerSource: 0 });
    const displaced: string[] = [];
    const flood = [0, 1, 2, 3].map(() => admit(users, 'flood', displaced));
    expect(flood.every((admission) => typeof admission === 'object')).toBe(true);
    expect(admit(users, 'flood', displaced)).toBe('sourceFull');
    expect(typeof admit(users, 'honest', displaced)).toBe('object');
    expect(typeof admit(users, 'other', displaced)).toBe('object');
    expect(displaced).toEqual(['flood', 'flood']);
    expect(users.waiting).toBe(4);
    // Shares even out at 2 flood, 1 honest, 1 other: a second honest user would leave flood no more than it, so it is refused.
    expect(admit(users, 'honest', displaced)).toBe('serviceFull');
    expect(displaced).toEqual(['flood', 'flood']);
    // The flood's users end: the two displaced were over already, the two waiting leave.
    for (const admission of flood) (admission as Admission).ended();
    expect(users.waiting).toBe(2);
  });

  it('gives a place back when a user is served or leaves', () => {
    const users = new AdmittedUsers({ maxWaiting: 2, maxWaitingPerSource: 1, maxTunnelsPerSource: 0 });
    const first = admit(users, 'a') as Admission;
    expect(admit(users, 'a')).toBe('sourceFull');
    first.served();
    expect(users.waiting).toBe(0);
    const second = admit(users, 'a') as Admission;
    second.ended();
    second.ended();
    expect(users.waiting).toBe(0);
  });

  it('with maxTunnelsPerSource, counts an address\'s open tunnels and waiting users together, and gives a place back when a tunnel ends', () => {
    const users = new AdmittedUsers({ maxWaiting: 100, maxWaitingPerSource: 100, maxTunnelsPerSource: 2 });
    const first = admit(users, 'a') as Admission;
    first.served();
    const second = admit(users, 'a') as Admission;
    expect(admit(users, 'a')).toBe('sourceTunnels');
    // Another address is not held back by a's tunnels.
    expect(typeof admit(users, 'b')).toBe('object');
    second.served();
    expect(admit(users, 'a')).toBe('sourceTunnels');
    first.ended();
    expect(typeof admit(users, 'a')).toBe('object');
  });
});
