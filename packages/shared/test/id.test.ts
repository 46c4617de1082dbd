import { describe, expect, it } from '@jest/globals';
import { ID_BYTES, generateId, idToBytes, isValidId, parseId } from '@pool/shared';

describe('connection IDs', () => {
  it('parses the text form and the 4 wire bytes to the same text', () => {
    expect(parseId('a1b2c3d4')).toBe('a1b2c3d4');
    expect(parseId(Buffer.from([0xa1, 0xb2, 0xc3, 0xd4]))).toBe('a1b2c3d4');
    expect(parseId(new Uint8Array([0, 0, 0, 1]))).toBe('00000001');
    expect(idToBytes('a1b2c3d4')).toEqual(Buffer.from([0xa1, 0xb2, 0xc3, 0xd4]));
  });

  it.each([
    ['too short', 'a1b2c3'],
    ['too long', 'a1b2c3d4e5'],
    ['upper case', 'A1B2C3D4'],
    ['not hex', 'g1b2c3d4'],
    ['padded', ' a1b2c3d'],
    ['empty', ''],
  ])('rejects text that is %s with ERR_INVALID_ID', (_label, input) => {
    expect(isValidId(input)).toBe(false);
    expect(() => parseId(input)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ID' }));
  });

  it.each([3, 5, 0])('rejects %i wire bytes with ERR_INVALID_ID', (length) => {
    expect(() => parseId(Buffer.alloc(length))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ID' }));
  });

  it('generates 8 lowercase hex characters, never a taken one', () => {
    const taken = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const id = generateId((candidate) => taken.has(candidate));
      expect(isValidId(id)).toBe(true);
      expect(taken.has(id)).toBe(false);
      taken.add(id);
    }
    expect(taken.size).toBe(10_000);
    expect(ID_BYTES).toBe(4);
  });

  it('redraws on collision and gives up with ERR_ID_EXHAUSTED when every draw is taken', () => {
    let draws = 0;
    const id = generateId(() => ++draws < 3);
    expect(draws).toBe(3);
    expect(isValidId(id)).toBe(true);
    expect(() => generateId(() => true, 5)).toThrow(expect.objectContaining({ code: 'ERR_ID_EXHAUSTED' }));
  });

  it('does not hand out predictable IDs (no counter, no fixed first value)', () => {
    const ids = Array.from({ length: 1_000 }, () => generateId(() => false));
    expect(ids).not.toContain('00000000');
    const numeric = ids.map((id) => Number.parseInt(id, 16));
    const ascending = numeric.filter((value, i) => i > 0 && value === numeric[i - 1]! + 1).length;
    expect(ascending).toBeLessThan(5);
    // Every hex digit shows up in every position across 1,000 CSPRNG draws.
    for (let position = 0; position < 8; position++) {
      expect(new Set(ids.map((id) => id[position])).size).toBe(16);
    }
  });
});
