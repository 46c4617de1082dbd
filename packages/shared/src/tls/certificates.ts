import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { InvalidOptionError } from '../core/errors.js';

/** The names a generated certificate carries by default: this host, by loopback. */
export const LOOPBACK_NAMES: readonly string[] = ['localhost', '127.0.0.1', '::1'];

/** A certificate and its key (PEM), with its SHA-256 fingerprint (`AB:CD:…`). */
export interface DevCertificate {
  cert: string;
  key: string;
  fingerprint: string;
}

/**
 * A self-signed certificate (EC P-256, SHA-256) for `names`, host names and
 * IP addresses alike: agents pin it by `fingerprint` (`tls: { fingerprint }`,
 * `--tls-fingerprint`) or trust a copy (`tls: { ca: cert }`, `--tls-ca`).
 */
export async function generateDevCertificate(names: readonly string[] = LOOPBACK_NAMES): Promise<DevCertificate> {
  const hosts = names.filter((name) => isIP(name) === 0);
  const ips = names.filter((name) => isIP(name) !== 0);
  const altNames = [...hosts.map((value) => ({ type: 2 as const, value })), ...ips.map((ip) => ({ type: 7 as const, ip }))];
  const request: GenerateRequest = {
    attrs: [{ name: 'commonName', value: hosts[0] ?? ips[0] ?? 'localhost' }],
    options: { keyType: 'ec', algorithm: 'sha256', extensions: altNames.length === 0 ? [] : [{ name: 'subjectAltName', altNames }] },
  };
  const { cert, key } = await generateApart(request).catch(async () => {
    // Where Node cannot be started again (a single-executable build, a sandbox without
    // child processes), the certificate is made here, and the heap keeps the libraries.
    const pems = await (await import('selfsigned')).generate(request.attrs, request.options);
    return { cert: pems.cert, key: pems.private };
  });
  // selfsigned's own `fingerprint` is the SHA-1 one.
  return { cert, key, fingerprint: new X509Certificate(cert).fingerprint256 };
}

/**
 * Runs selfsigned in a child process. In the process that loads it, it (and
 * the X.509 and ASN.1 libraries behind it) stays in the heap: megabytes, which
 * lift a relay's old generation over V8's threshold for incremental marking,
 * and a relay over it pays a full GC every few tens of ms while it carries
 * bulk (CPU per GB 1.4x). A worker thread's heap would go, but not the memory
 * its allocator keeps (9 MiB of RSS); a process gives it all back.
 */
const GENERATE = `
const { module, attrs, options } = JSON.parse(process.argv[1]);
require(module).generate(attrs, options).then(
  (pems) => process.stdout.write(JSON.stringify({ cert: pems.cert, key: pems.private })),
  () => { process.exitCode = 1; },
);`;

type Generate = (typeof import('selfsigned'))['generate'];
type GenerateRequest = { attrs: Parameters<Generate>[0]; options: Parameters<Generate>[1] };

/** Rejects whenever the child does not hand back a certificate: the caller then makes it in-process, whose error tells why. */
function generateApart(request: GenerateRequest): Promise<{ cert: string; key: string }> {
  const module = createRequire(import.meta.url).resolve('selfsigned');
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', GENERATE, JSON.stringify({ module, ...request })], { timeout: 30_000 }, (error, stdout) => {
      if (error) return reject(error);
      try {
        resolve(JSON.parse(stdout) as { cert: string; key: string });
      } catch (notJson) {
        reject(notJson as Error);
      }
    });
  });
}

/**
 * The certificate kept in `dir` (`<base>.crt`, `<base>.key`), or a new one
 * for `names` written there (the key readable by its owner only), so that
 * its fingerprint can be pinned across restarts: the relay's (`relay`) by
 * agents, an agent's (`agent`) by the relay. A kept certificate that does not
 * name all of `names` is an error: delete it to make a new one.
 */
export async function keptCertificate(dir: string, names: readonly string[], base = 'relay'): Promise<DevCertificate & { certFile: string; created: boolean }> {
  const certFile = join(dir, `${base}.crt`);
  const keyFile = join(dir, `${base}.key`);
  if (existsSync(certFile) && existsSync(keyFile)) {
    const cert = readFileSync(certFile, 'utf8');
    const x509 = new X509Certificate(cert);
    const missing = names.filter((name) => (isIP(name) === 0 ? x509.checkHost(name) : x509.checkIP(name)) === undefined);
    if (missing.length > 0) {
      throw new InvalidOptionError('--tls-name', names.join(','), `names ${certFile} has (${x509.subjectAltName ?? 'none'}); delete it and its key to make one for ${missing.join(', ')}`);
    }
    return { cert, key: readFileSync(keyFile, 'utf8'), fingerprint: x509.fingerprint256, certFile, created: false };
  }
  const made = await generateDevCertificate(names);
  mkdirSync(dir, { recursive: true });
  writeFileSync(keyFile, made.key, { mode: 0o600 });
  writeFileSync(certFile, made.cert, { mode: 0o644 });
  return { ...made, certFile, created: true };
}

/**
 * A SHA-256 fingerprint as pool-relay and pool-agent print it (`AB:CD:…`,
 * 32 bytes) or as 64 hex digits, in either case, optionally after `sha256:`;
 * in the `AB:CD:…` form Node's `fingerprint256` has, or undefined if it is neither.
 */
export function parseFingerprint(text: string): string | undefined {
  const hex = text.trim().replace(/^sha256[:=]/i, '').replace(/:/g, '');
  if (!/^[0-9a-f]{64}$/i.test(hex)) return undefined;
  return hex.toUpperCase().match(/../g)!.join(':');
}
