import { describe, expect, it } from '@jest/globals';
import { ClientGroups } from '../src/pool/client-groups.js';
import { parseTokens, matchToken } from '../src/pool/token.js';

function recorder(): { events: string[]; groups: ClientGroups } {
  const events: string[] = [];
  const groups = new ClientGroups(
    (client) => events.push(`up ${client}`),
    (client) => events.push(`down ${client}`),
  );
  return { events, groups };
}

describe('ClientGroups', () => {
  it('announces a client once on its first connection and once after its last of N', () => {
    const { events, groups } = recorder();
    const handles = Array.from({ length: 5 }, () => groups.join('10.0.0.1'));
    expect(events).toEqual(['up 10.0.0.1']);
    for (const handle of handles.slice(0, 4)) groups.leave(handle);
    expect(events).toEqual(['up 10.0.0.1']);
    groups.leave(handles[4]!);
    expect(events).toEqual(['up 10.0.0.1', 'down 10.0.0.1']);
    expect(groups.size).toBe(0);
  });

  it('keeps clients apart, and a client that returns is up again', () => {
    const { events, groups } = recorder();
    const a = groups.join('a');
    const b = groups.join('b');
    expect(groups.size).toBe(2);
    groups.leave(a);
    const again = groups.join('a');
    groups.leave(b);
    groups.leave(again);
    expect(events).toEqual(['up a', 'up b', 'down a', 'up a', 'down b', 'down a']);
  });

  it('ignores a leave beyond the joins: clientDown never fires twice', () => {
    const { events, groups } = recorder();
    const a = groups.join('a');
    groups.leave(a);
    groups.leave(a);
    const b = groups.join('a');
    groups.leave(a); // a stale handle must not take the new group down
    expect(events).toEqual(['up a', 'down a', 'up a']);
    groups.leave(b);
    expect(events).toEqual(['up a', 'down a', 'up a', 'down a']);
  });
});

describe('parseTokens / matchToken', () => {
  it('is off with neither token nor tokens', () => {
    expect(parseTokens(undefined, undefined)).toBeUndefined();
    expect(parseTokens(undefined, {})).toBeUndefined();
  });

  it('names the client whose secret was presented; the shared token names none', () => {
    const table = parseTokens('shared', { east: 'e-secret', west: 'w-secret' })!;
    expect(matchToken(table, 'w-secret')?.client).toBe('west');
    expect(matchToken(table, 'e-secret')?.client).toBe('east');
    const shared = matchToken(table, 'shared');
    expect(shared).toBeDefined();
    expect(shared?.client).toBeUndefined();
    expect(matchToken(table, 'w-secre')).toBeUndefined();
    expect(matchToken(table, undefined)).toBeUndefined();
    expect(matchToken(table, ['w-secret'])).toBeUndefined();
  });

  it.each([
    ['an empty shared token', '', undefined],
    ['an empty named secret', undefined, { east: '' }],
    ['one secret under two names', undefined, { east: 'same', west: 'same' }],
    ['the shared token reused as a named one', 'same', { east: 'same' }],
  ])('rejects %s with ERR_INVALID_OPTION', (_name, token, tokens) => {
    expect(() => parseTokens(token, tokens)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });
});
