import { describe, expect, it, beforeAll, afterAll } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// The packages as a user gets them: packed into tarballs, installed with npm
// into a project outside the workspace, and driven by the READMEs' own code.
// The README is read at test time, so an example that drifts from the API
// fails here.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

function run(command: string, args: string[], cwd: string, timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, timeout: timeoutMs, env: process.env, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** The ```ts blocks of a markdown file, in order. */
async function typescriptBlocks(file: string): Promise<string[]> {
  const text = await readFile(join(ROOT, file), 'utf8');
  return [...text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((match) => match[1]!);
}

/**
 * The package READMEs show options with placeholders (`cert`, `registry`,
 * `pino()`, …) rather than a runnable program; they are type-checked with the
 * placeholders declared, not run.
 */
const PLACEHOLDERS = `import type { Registry } from 'prom-client';
import type { Logger } from '@pool/server';
declare const cert: string;
declare const key: string;
declare const registry: Registry;
declare function pino(): Logger;
declare function tellAgent(client: string | undefined, count: number): void;
declare const idFromRelay: string;
declare const signal: AbortSignal;
declare const token: string;
`;

describe('the packed packages, installed with npm outside the workspace', () => {
  let project: string;

  beforeAll(async () => {
    project = await mkdtemp(join(tmpdir(), 'pool-consumer-'));
    const packs = join(project, 'packs');
    await run('npx', ['-y', 'pnpm@10', '-r', 'pack', '--pack-destination', packs], ROOT, 120_000);
    const tarballs = (await readdir(packs)).filter((name) => name.endsWith('.tgz')).map((name) => join(packs, name));
    expect(tarballs).toHaveLength(3);
    await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], project, 180_000);
    await writeFile(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          types: ['node'],
          typeRoots: [join(ROOT, 'node_modules/@types')],
          outDir: 'out',
        },
        include: ['*.ts'],
      }),
    );
  }, 300_000);

  afterAll(async () => {
    if (project) await rm(project, { recursive: true, force: true });
  });

  it('each tarball holds its built dist and its command stub, and names no workspace: dependency', async () => {
    for (const name of ['shared', 'server', 'client']) {
      const manifest = JSON.parse(await readFile(join(project, 'node_modules/@pool', name, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
      expect(Object.values(manifest.dependencies).some((range) => range.startsWith('workspace:'))).toBe(false);
      expect((await readdir(join(project, 'node_modules/@pool', name, 'dist'))).includes('index.d.ts')).toBe(true);
    }
    const help = await run(join(project, 'node_modules/.bin/pool-agent'), ['--help'], project, 30_000);
    expect(help.stdout).toMatch(/^Usage: pool-agent/);
  });

  it('exports what an application uses; CLI helpers and pool mechanics stay behind subpaths', async () => {
    const keysOf = async (specifier: string): Promise<string[]> => {
      const { stdout } = await run(process.execPath, ['--input-type=module', '-e', `console.log(JSON.stringify(Object.keys(await import('${specifier}'))))`], project, 30_000);
      return JSON.parse(stdout) as string[];
    };
    const server = await keysOf('@pool/server');
    const client = await keysOf('@pool/client');
    expect(server).toEqual(expect.arrayContaining(['ServerPool', 'Relay', 'PoolConn', 'PoolTimeoutError', 'generateDevCertificate', 'splice']));
    expect(client).toEqual(expect.arrayContaining(['ClientPool', 'Agent', 'PoolConn', 'PoolTimeoutError']));
    for (const internal of ['parseCommandLine', 'CliOperations', 'IdleSocket', 'PendingGet', 'listen', 'KeepAliveSweeper', 'encodeControl']) {
      expect(server).not.toContain(internal);
      expect(client).not.toContain(internal);
    }
    expect(await keysOf('@pool/shared/cli')).toContain('parseCommandLine');
    expect(await keysOf('@pool/shared/internal')).toContain('IdleSocket');
  });

  it("runs the top-level README's SDK example as JavaScript", async () => {
    const [example] = await typescriptBlocks('README.md');
    await writeFile(join(project, 'readme-example.mjs'), example!);
    const { stdout } = await run(process.execPath, ['readme-example.mjs'], project, 60_000);
    expect(stdout).toMatch(/^"hello" came back through connection [0-9a-f]{8}$/m);
  }, 90_000);

  it("runs the top-level README's SDK example as TypeScript compiled by tsc --strict, and type-checks the package READMEs' examples", async () => {
    const [example] = await typescriptBlocks('README.md');
    await writeFile(join(project, 'readme-example.ts'), example!);
    let count = 0;
    for (const name of ['server', 'client']) {
      for (const block of await typescriptBlocks(`packages/${name}/README.md`)) {
        await writeFile(join(project, `${name}-readme-${count++}.ts`), `${PLACEHOLDERS}${block}`);
      }
    }
    expect(count).toBeGreaterThanOrEqual(3);
    await run(process.execPath, [TSC, '-p', 'tsconfig.json'], project, 120_000);
    const { stdout } = await run(process.execPath, ['out/readme-example.js'], project, 60_000);
    expect(stdout).toMatch(/^"hello" came back through connection [0-9a-f]{8}$/m);
  }, 180_000);
});
