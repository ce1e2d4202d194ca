/**
 * The Docker behaviour the names design rests on, checked against real dockerds (root): with
 * `--dns 169.254.53.53` (daemon.json's `dns`), Docker's embedded resolver forwards a container's outside
 * names to that address **from inside the container's network namespace**, also for a container only on
 * an `--internal` network; so a connected route to it over the container's kvnet interface brings the
 * query to kvnet's resolver in the overlay namespace. And what an upstream's REFUSED (kvnet's answer for
 * internal-only sandboxes) becomes in the container: REFUSED on 20.10, SERVFAIL on 28 and 29.
 *
 * No kvnet here: a bridge network stands in for the kvnet network (the route is added by hand, as the
 * plugin's Join answer would), and the DNS server on 169.254.53.53 in the host namespace logs the source
 * of each query. Runs on Debian's dockerd 20.10 always, and on 28.5.2 / 29.8.1 when they are built in
 * /var/cache/kvnet (scripts/install-docker.sh), each in its own simulated host.
 */

import test from 'ava';
import { join } from 'node:path';
import { canRunDockerd, startDockerd } from '../../../../test/support/dockerd.ts';
import { dockerEngine, engineMissing, type DockerEngineName } from '../../../../test/support/docker-engines.ts';
import { REPO_ROOT, run, runId, startProcess, waitFor } from '../../../../test/support/process.ts';
import { createSimNetwork } from '../../../../test/support/sim-hosts.ts';
import { UPSTREAM_ANSWER } from '../../../../test/support/dns-upstream-server.ts';

const RESOLVER = '169.254.53.53';
/**
 * `refused`: what the container sees when the upstream answers REFUSED. 20.10 passes the REFUSED on;
 * newer engines try their next server and then answer SERVFAIL (moby v28.5.2 `forwardExtDNS`).
 * 28.5.2 and 29.8.1 run when scripts/install-docker.sh built them (docker-engines.ts).
 */
const ENGINES: Array<{ version: DockerEngineName; refused: 'REFUSED' | 'SERVFAIL' }> = [
  { version: '20.10', refused: 'REFUSED' },
  ...(engineMissing(dockerEngine('28.5.2')) ? [] : [{ version: '28.5.2' as const, refused: 'SERVFAIL' as const }]),
  ...(engineMissing(dockerEngine('29.8.1')) ? [] : [{ version: '29.8.1' as const, refused: 'SERVFAIL' as const }]),
];

for (const engine of ENGINES) {
  test.serial(`Docker ${engine.version}: an internal-only container's outside names are forwarded to the --dns address from the container's own namespace; an upstream REFUSED reaches the container as ${engine.refused}`, async (t) => {
    t.true(await canRunDockerd(engine.version), `this machine can run dockerd ${engine.version} (root, busybox-static)`);
    const id = runId();
    const sim = await createSimNetwork({ hosts: 1, prefix: id });
    const host = sim.hosts[0]!;
    let dockerd: Awaited<ReturnType<typeof startDockerd>> | undefined;
    let upstream: ReturnType<typeof startProcess> | undefined;
    try {
      await run('ip', ['-n', host.name, 'address', 'add', `${RESOLVER}/32`, 'dev', 'lo']);
      upstream = startProcess('dns-upstream', process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'test/support/dns-upstream-server.ts'), RESOLVER, '53'], { netns: host.name, cwd: REPO_ROOT });
      await waitFor('the DNS server', () => upstream!.log().includes('listening'), 20_000, 100);
      dockerd = await startDockerd({ host, runId: id, engine: engine.version, extraArgs: ['--dns', RESOLVER] });
      t.true((await dockerd.dockerOk('version', '--format', '{{.Server.Version}}')).startsWith(engine.version));
      await dockerd.dockerOk('network', 'create', '--internal', '--subnet', '172.29.0.0/24', `in${id}`);
      await dockerd.dockerOk('network', 'create', '--subnet', '172.28.0.0/24', `ex${id}`);
      for (const [c, net, subnet] of [['ci', `in${id}`, '172.29.0.'], ['ce', `ex${id}`, '172.28.0.']] as const) {
        const name = `${c}${id}`;
        await dockerd.dockerOk('run', '-d', '--name', name, '--network', net, dockerd.image, 'sleep', '600');
        const pid = await dockerd.dockerOk('inspect', '-f', '{{.State.Pid}}', name);
        // What the kvnet plugin's Join answer gives: a connected route over the network's interface.
        await run('nsenter', ['-t', pid, '-n', 'ip', 'route', 'replace', `${RESOLVER}/32`, 'dev', 'eth0', 'scope', 'link']);
        const q = `q${c}${id}.up.test`;
        const r = await dockerd.docker('exec', name, 'busybox', 'nslookup', q);
        t.regex(r.stdout, new RegExp(`Address: ${UPSTREAM_ANSWER.replace(/\./g, '\\.')}`), `${c}: answered through Docker's resolver`);
        const seen = await waitFor(`the server to log ${q}`, () => upstream!.log().split('\n').find((l) => l.includes(` ${q} 1`)), 5000);
        const source = seen.split(' ')[2]!;
        t.true(source.startsWith(subnet), `${c}: the query came from the container's own address (${source}), not the host`);
        const refused = await dockerd.docker('exec', name, 'busybox', 'nslookup', `refused${id}.example`);
        t.regex(refused.stdout + refused.stderr, new RegExp(`can't find refused${id}\\.example: ${engine.refused}`), `${c}: an upstream REFUSED reaches the container as ${engine.refused}`);
        t.notRegex(refused.stdout, /^Address: (?!127\.0\.0\.11)/m, `${c}: and no address`);
      }
    } finally {
      await dockerd?.stop();
      await upstream?.kill();
      await sim.destroy();
    }
  });
}
