import { describe, expect, it } from '@jest/globals';
import { ConnectionClosedError, PoolTimeoutError } from '@pool/shared';
import { outcomeOf } from '@pool/shared/internal';
import { createLineLogger } from '@pool/shared/cli';

describe('outcomeOf: a bounded label for an error', () => {
  it.each([
    ['one of our codes', new PoolTimeoutError(), 'ERR_POOL_TIMEOUT'],
    ['one of our codes, with a cause', new ConnectionClosedError(1006, ''), 'ERR_CONN_CLOSED'],
    ["a Node errno code", Object.assign(new Error('connect'), { code: 'ECONNREFUSED' }), 'ECONNREFUSED'],
    ['an error without a code', new Error('boom'), 'error'],
    ['a code that is not one of the known shapes', Object.assign(new Error('x'), { code: 'user supplied <script>' }), 'error'],
    ['an absurdly long code', Object.assign(new Error('x'), { code: `ERR_${'A'.repeat(100)}` }), 'error'],
    ['a non-error', 'just a string', 'error'],
    ['null', null, 'error'],
  ])('%s', (_name, error, expected) => {
    expect(outcomeOf(error)).toBe(expected);
  });
});

describe('createLineLogger', () => {
  function capture(level: string): { lines: string[]; logger: ReturnType<typeof createLineLogger> } {
    const lines: string[] = [];
    return { lines, logger: createLineLogger(level, (line) => lines.push(line)) };
  }

  it('writes one JSON object per line, pino-style, with the error as message and code', () => {
    const { lines, logger } = capture('debug');
    logger.warn({ err: new PoolTimeoutError(), id: 'abcd0123' }, 'get failed');
    expect(lines).toHaveLength(1);
    expect(lines[0]!.endsWith('\n')).toBe(true);
    const entry = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(entry).toMatchObject({ level: 'warn', msg: 'get failed', id: 'abcd0123', err: { code: 'ERR_POOL_TIMEOUT' } });
    expect(typeof entry.time).toBe('number');
  });

  it('drops what is below its level, and everything when off', () => {
    const info = capture('info');
    info.logger.debug({}, 'hidden');
    info.logger.info({}, 'shown');
    info.logger.error({}, 'shown too');
    expect(info.lines.map((line) => (JSON.parse(line) as { msg: string }).msg)).toEqual(['shown', 'shown too']);
    const off = capture('off');
    off.logger.error({}, 'hidden');
    expect(off.lines).toEqual([]);
  });

  it('rejects an unknown level with ERR_INVALID_OPTION', () => {
    expect(() => createLineLogger('verbose', () => {})).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });
});
