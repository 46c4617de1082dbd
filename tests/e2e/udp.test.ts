import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { randomBytes, randomInt } from 'node:crypto';
import type { RemoteInfo, Socket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import dns2 from 'dns2';
import { request } from 'undici';
import { AGENT_BIN, CliProcess, RELAY_BIN } from '../helpers/processes.js';
import { boundUdpSocket } from '../helpers/udp.js';

// UDP services through the real CLIs: datagram boundaries kept, replies at the
// flow that sent, flows expiring and releasing their pooled connections,
// oversized datagrams dropped and counted, and a real DNS server answering a
// real resolver through the tunnel.

const TOKEN = 'udp-tunnel-secret-0123456789';
const IDLE_MS = 1_000;
const MAX_DATAGRAM = 1_400;
const FLOWS = 50;
const PER_FLOW = 200;

const processes: CliProcess[] = [];
const sockets: Socket[] = [];

afterAll(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  for (const socket of sockets.splice(0)) socket.close();
});

async function udpSocket(): Promise<Socket> {
  const socket = await boundUdpSocket();
  sockets.push(socket);
  return socket;
}

/** A relay with one UDP public port and an agent whose target is `target`; the relay's ports. */
async function udpTunnel(target: number, relayArgs: string[] = []): Promise<{ relay: CliProcess; agent: CliProcess; publicPort: number; metricsPort: number; agentMetricsPort: number }> {
  const relay = new CliProcess(RELAY_BIN, [
    '--plain', '--udp', '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0',
    '--token', TOKEN, '--status-interval', '100', '--metrics-port', '0', ...relayArgs,
  ]);
  processes.push(relay);
  const ready = await relay.waitFor(/ready port=(\d+) public-port=(\d+).* metrics-port=(\d+)/, 10_000, true);
  const agent = new CliProcess(AGENT_BIN, [
    '--server', `127.0.0.1:${ready[1]}`, '--tls', 'off', '--token', TOKEN, '--target', `127.0.0.1:${target}`,
    '--status-interval', '100', '--min-cap', '4', '--metrics-port', '0',
  ]);
  processes.push(agent);
  await agent.waitFor(/control connected/, 10_000, true);
  const agentMetricsPort = Number((await agent.waitFor(/metrics-port=(\d+)/, 10_000, true))[1]);
  return { relay, agent, publicPort: Number(ready[2]), metricsPort: Number(ready[3]), agentMetricsPort };
}

async function metric(port: number, pattern: RegExp): Promise<number> {
  const text = await (await request(`http://127.0.0.1:${port}/metrics`)).body.text();
  const match = pattern.exec(text);
  return match ? Number(match[1]) : 0;
}

/** Sends `datagram` from `socket` and resolves with the reply, resending up to 3 times after 2 s each; counts what happened. */
function exchange(socket: Socket, to: number, datagram: Buffer, tally: { retransmits: number }): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    let attempts = 0;
    let timer: NodeJS.Timeout;
    const send = (): void => {
      if (attempts++ === 4) {
        socket.removeListener('message', onReply);
        resolve(undefined);
        return;
      }
      if (attempts > 1) tally.retransmits++;
      socket.send(datagram, to, '127.0.0.1');
      timer = setTimeout(send, 2_000);
    };
    const onReply = (reply: Buffer): void => {
      clearTimeout(timer);
      socket.removeListener('message', onReply);
      resolve(reply);
    };
    socket.on('message', onReply);
    send();
  });
}

describe('a UDP service through pool-relay --udp and pool-agent', () => {
  let echoPort: number;
  let tunnel: Awaited<ReturnType<typeof udpTunnel>>;

  beforeAll(async () => {
    const echo = await udpSocket();
    // An echo, except that `grow` is answered with a datagram over the tunnel's maximum.
    echo.on('message', (datagram: Buffer, from: RemoteInfo) => {
      echo.send(datagram.toString() === 'grow' ? Buffer.alloc(MAX_DATAGRAM + 1) : datagram, from.port, from.address);
    });
    echoPort = echo.address().port;
    tunnel = await udpTunnel(echoPort, ['--udp-idle-timeout', String(IDLE_MS), '--udp-max-datagram', String(MAX_DATAGRAM)]);
  }, 30_000);

  it(`echoes ${FLOWS * PER_FLOW} datagrams of 1 to ${MAX_DATAGRAM} bytes from ${FLOWS} concurrent flows, each reply byte-identical and at the flow that sent it`, async () => {
    const tally = { retransmits: 0, answered: 0, mismatched: 0, lost: 0 };
    const clients = await Promise.all(Array.from({ length: FLOWS }, udpSocket));
    await Promise.all(
      clients.map(async (client, flow) => {
        for (let i = 0; i < PER_FLOW; i++) {
          // Every size from 1 byte to the maximum occurs; the rest are random.
          const size = flow === 0 && i === 0 ? 1 : flow === 0 && i === 1 ? MAX_DATAGRAM : randomInt(1, MAX_DATAGRAM + 1);
          const datagram = randomBytes(size);
          const reply = await exchange(client, tunnel.publicPort, datagram, tally);
          if (reply === undefined) tally.lost++;
          else if (reply.equals(datagram)) tally.answered++;
          else tally.mismatched++;
          // A late reply to a resent datagram would be taken for the next one's: after a resend, wait it out.
          if (tally.retransmits > 0) await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }),
    );
    expect(tally).toMatchObject({ answered: FLOWS * PER_FLOW, mismatched: 0, lost: 0 });
    expect(tally.retransmits).toBeLessThan(FLOWS * PER_FLOW * 0.01);
    const status = await tunnel.relay.waitForStatus((s) => s.flows === String(FLOWS), 5_000);
    expect(status['udp-dropped']).toBe('0');
    expect(await metric(tunnel.agentMetricsPort, /pool_agent_udp_flows_open\{[^}]*\} (\d+)/)).toBe(FLOWS);
    const received = await metric(tunnel.metricsPort, /pool_relay_udp_datagrams_total\{[^}]*direction="from_users"\} (\d+)/);
    const sent = await metric(tunnel.metricsPort, /pool_relay_udp_datagrams_total\{[^}]*direction="to_users"\} (\d+)/);
    expect(received).toBeGreaterThanOrEqual(FLOWS * PER_FLOW);
    expect(sent).toBeGreaterThanOrEqual(FLOWS * PER_FLOW);
    if (tally.retransmits === 0) expect([received, sent]).toEqual([FLOWS * PER_FLOW, FLOWS * PER_FLOW]);
  }, 90_000);

  it('closes idle flows on both ends and releases their pooled connections', async () => {
    await tunnel.relay.waitForStatus((s) => s.flows === '0', IDLE_MS + 5_000);
    await tunnel.agent.waitForStatus((s) => s.flows === '0' && s.open === '0', 5_000);
    expect(await metric(tunnel.metricsPort, /pool_relay_udp_flows_open\{[^}]*\} (\d+)/)).toBe(0);
    expect(await metric(tunnel.agentMetricsPort, /pool_agent_udp_flows_open\{[^}]*\} (\d+)/)).toBe(0);
    expect(await metric(tunnel.metricsPort, /pool_connections\{[^}]*state="leased"\} (\d+)/)).toBe(0);
    // A flow that comes back after expiring is simply a new flow.
    const client = await udpSocket();
    const again = await exchange(client, tunnel.publicPort, Buffer.from('back again'), { retransmits: 0 });
    expect(again?.toString()).toBe('back again');
  }, 30_000);

  it('drops a datagram over --udp-max-datagram, never splits it, and counts it', async () => {
    const before = await metric(tunnel.metricsPort, /pool_relay_udp_dropped_total\{[^}]*reason="oversized"\} (\d+)/);
    const client = await udpSocket();
    const replies: Buffer[] = [];
    client.on('message', (reply: Buffer) => replies.push(reply));
    client.send(randomBytes(MAX_DATAGRAM + 1), tunnel.publicPort, '127.0.0.1');
    const fits = randomBytes(MAX_DATAGRAM);
    client.send(fits, tunnel.publicPort, '127.0.0.1');
    const deadline = Date.now() + 5_000;
    while (replies.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(replies).toHaveLength(1);
    expect(replies[0]!.equals(fits)).toBe(true);
    expect(await metric(tunnel.metricsPort, /pool_relay_udp_dropped_total\{[^}]*reason="oversized"\} (\d+)/)).toBe(before + 1);
  }, 30_000);

  it("drops a target's reply over --udp-max-datagram at the agent, and counts it there", async () => {
    const client = await udpSocket();
    const replies: Buffer[] = [];
    client.on('message', (reply: Buffer) => replies.push(reply));
    // The flow is open once its first datagram is answered; then the target answers too large.
    expect((await exchange(client, tunnel.publicPort, Buffer.from('open'), { retransmits: 0 }))?.toString()).toBe('open');
    client.send('grow', tunnel.publicPort, '127.0.0.1');
    const deadline = Date.now() + 5_000;
    let dropped = 0;
    while (dropped === 0 && Date.now() < deadline) {
      dropped = await metric(tunnel.agentMetricsPort, /pool_agent_udp_dropped_total\{[^}]*reason="oversized"\} (\d+)/);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(dropped).toBe(1);
    expect(replies.map(String)).toEqual(['open']);
  }, 30_000);
});

describe('DNS through the tunnel', () => {
  it('a resolver gets its answer from a DNS server behind the agent', async () => {
    const server = dns2.createServer({
      udp: true,
      handle: (query, send) => {
        const response = dns2.Packet.createResponseFromRequest(query);
        const [question] = query.questions;
        if (question?.name === 'service.pool.test') {
          response.answers.push({ name: question.name, type: dns2.Packet.TYPE.A, class: dns2.Packet.CLASS.IN, ttl: 60, address: '10.20.30.40' });
        }
        send(response);
      },
    });
    await server.listen({ udp: { port: 0, address: '127.0.0.1' } });
    try {
      const dnsPort = server.addresses().udp!.port;
      const { publicPort } = await udpTunnel(dnsPort);
      const resolver = new Resolver({ timeout: 2_000, tries: 3 });
      resolver.setServers([`127.0.0.1:${publicPort}`]);
      expect(await resolver.resolve4('service.pool.test')).toEqual(['10.20.30.40']);
      await expect(resolver.resolve4('elsewhere.pool.test')).rejects.toMatchObject({ code: 'ENODATA' });
    } finally {
      await server.close();
    }
  }, 30_000);
});
