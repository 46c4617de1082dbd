import { describe, expect, it } from '@jest/globals';
import { MAX_PREFACE_BYTES, encodeAnswer, encodePreface, parseAnswer, parsePreface, takeLine } from '@pool/shared/internal';

describe('the raw transport preface and answer', () => {
  it('carries the upgrade headers as one JSON line, names lowercased', () => {
    const line = encodePreface({ 'x-pool-token': 'secret', 'x-pool-session': 'abc' });
    expect(line.at(-1)).toBe(0x0a);
    expect(line.subarray(0, -1).includes(0x0a)).toBe(false);
    expect(parsePreface(line.subarray(0, -1).toString())).toEqual({ 'x-pool-token': 'secret', 'x-pool-session': 'abc' });
    expect(parsePreface('{"v":1,"headers":{"X-Pool-Token":"t"}}')).toEqual({ 'x-pool-token': 't' });
  });

  it.each([
    ['not JSON', 'GET / HTTP/1.1'],
    ['not an object', '[1]'],
    ['another version', '{"v":2,"headers":{}}'],
    ['no headers', '{"v":1}'],
    ['headers an array', '{"v":1,"headers":[]}'],
    ['a header that is not a string', '{"v":1,"headers":{"x-pool-token":1}}'],
  ])('refuses a preface that is %s with ERR_PROTOCOL', (_label, line) => {
    expect(() => parsePreface(line)).toThrow(expect.objectContaining({ code: 'ERR_PROTOCOL' }));
  });

  it('answers with the ID, or a status and its reason', () => {
    expect(parseAnswer(encodeAnswer({ status: 200, id: 'a1b2c3d4' }).toString().trimEnd())).toEqual({ status: 200, id: 'a1b2c3d4' });
    expect(parseAnswer(encodeAnswer({ status: 401, reason: 'unauthorized' }).toString().trimEnd())).toEqual({ status: 401, reason: 'unauthorized' });
    expect(parseAnswer('{"v":1,"status":503}')).toEqual({ status: 503, reason: '' });
  });

  it.each([
    ['a 200 without an ID', '{"v":1,"status":200}'],
    ['a 200 with a malformed ID', '{"v":1,"status":200,"id":"A1B2C3D4"}'],
    ['no status', '{"v":1,"id":"a1b2c3d4"}'],
    ['not JSON', 'HTTP/1.1 400 Bad Request'],
  ])('refuses an answer that is %s with ERR_PROTOCOL', (_label, line) => {
    expect(() => parseAnswer(line)).toThrow(expect.objectContaining({ code: 'ERR_PROTOCOL' }));
  });

  it('splits a line off what was read, keeping the stream bytes after it', () => {
    expect(takeLine(Buffer.from('{"v":1'), MAX_PREFACE_BYTES)).toBeUndefined();
    const taken = takeLine(Buffer.from('line\nstream bytes\n'), MAX_PREFACE_BYTES);
    expect(taken?.line).toBe('line');
    expect(taken?.rest.toString()).toBe('stream bytes\n');
    expect(takeLine(Buffer.from('\n'), MAX_PREFACE_BYTES)).toEqual({ line: '', rest: Buffer.alloc(0) });
  });

  it('gives up on a line longer than the limit, with or without its newline', () => {
    expect(() => takeLine(Buffer.alloc(MAX_PREFACE_BYTES, 0x61), MAX_PREFACE_BYTES)).toThrow(expect.objectContaining({ code: 'ERR_PROTOCOL' }));
    expect(() => takeLine(Buffer.concat([Buffer.alloc(MAX_PREFACE_BYTES, 0x61), Buffer.from('\n')]), MAX_PREFACE_BYTES)).toThrow(
      expect.objectContaining({ code: 'ERR_PROTOCOL' }),
    );
    expect(takeLine(Buffer.concat([Buffer.alloc(MAX_PREFACE_BYTES - 1, 0x61), Buffer.from('\n')]), MAX_PREFACE_BYTES)?.line).toHaveLength(MAX_PREFACE_BYTES - 1);
  });
});
