import { describe, expect, it } from '@jest/globals';
import { PendingGet } from '@pool/shared/internal';

describe('PendingGet', () => {
  it('rejects with ERR_POOL_TIMEOUT at the timeout and reports giving up once', async () => {
    let gaveUp = 0;
    const get = new PendingGet<string>(20, {}, () => gaveUp++);
    await expect(get.promise).rejects.toMatchObject({ code: 'ERR_POOL_TIMEOUT' });
    expect(gaveUp).toBe(1);
    expect(get.resolve('late')).toBe(false);
  });

  it('rejects with ERR_POOL_ABORTED carrying the reason when the signal aborts', async () => {
    const controller = new AbortController();
    let gaveUp = 0;
    const get = new PendingGet<string>(10_000, { signal: controller.signal }, () => gaveUp++);
    controller.abort(new Error('user left'));
    await expect(get.promise).rejects.toMatchObject({ code: 'ERR_POOL_ABORTED', cause: new Error('user left') });
    expect(gaveUp).toBe(1);
  });

  it('settles at once, without a queue removal, for a signal that is already aborted', async () => {
    let gaveUp = 0;
    const get = new PendingGet<string>(10_000, { signal: AbortSignal.abort() }, () => gaveUp++);
    expect(get.settled).toBe(true);
    await expect(get.promise).rejects.toMatchObject({ code: 'ERR_POOL_ABORTED' });
    expect(gaveUp).toBe(0);
  });

  it('resolves once; the first settlement wins and clears the timer', async () => {
    const timersBefore = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const controller = new AbortController();
    const get = new PendingGet<string>(10_000, { signal: controller.signal }, () => {
      throw new Error('must not give up after resolving');
    });
    expect(get.resolve('conn')).toBe(true);
    expect(get.reject(new Error('too late'))).toBe(false);
    controller.abort();
    await expect(get.promise).resolves.toBe('conn');
    expect(process.getActiveResourcesInfo().filter((r) => r === 'Timeout')).toHaveLength(timersBefore);
  });
});
