import { readFileSync } from 'node:fs';

const PEM_BLOCKS = /-----BEGIN [A-Z ]*?(PRIVATE KEY|CERTIFICATE)-----/g;

/**
 * A PEM file holding a `label` block, for a CLI flag or config key (`where`),
 * or one readable line naming `where`, the file and what is wrong: a
 * missing file (its errno code), no PEM at all, or the other kind of block
 * (a certificate where a key belongs: the two swapped).
 */
export function readPemFile(file: string, where: string, label: 'CERTIFICATE' | 'PRIVATE KEY'): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (error) {
    throw new Error(`${where} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const blocks = new Set([...pem.toString('latin1').matchAll(PEM_BLOCKS)].map((match) => match[1]));
  if (blocks.has(label)) return pem;
  const other = [...blocks][0];
  if (other === undefined) throw new Error(`${where} ${file}: not a PEM ${label.toLowerCase()}`);
  throw new Error(`${where} ${file}: it holds a ${other.toLowerCase()} (are cert and key swapped?)`);
}
