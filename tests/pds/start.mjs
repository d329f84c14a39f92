// Starts a real ATProto PDS (@atproto/pds) plus an in-process, in-memory PLC
// directory (@did-plc/server), both bound to 127.0.0.1 only, for knotd's
// integration tests. No outbound network is used: no crawlers/relay, no SMTP
// (mails go to nodemailer's jsonTransport), no appview/mod service, and DIDs
// resolve against the local PLC.
//
// Env:
//   PDS_PORT      port for the PDS (default 0 = pick a free one)
//   PLC_PORT      port for the PLC directory (default 0 = pick a free one)
//   PDS_HOST      the IPv4 address both servers bind and name in their URLs
//                 (default 127.0.0.1; the soak test runs them inside a network
//                 namespace on the address its nodes reach)
//   PDS_KEEP_STDIN=1   do NOT exit when stdin (a pipe/socket/tty) reaches EOF
//   LOG_ENABLED=true   PDS/PLC logs (to stderr unless LOG_DESTINATION is set)
//
// Prints exactly one JSON line to stdout when ready:
//   {"pds":"http://127.0.0.1:P","plc":"http://127.0.0.1:Q","adminPassword":"...","dataDir":"...","pid":N}
// then runs until SIGTERM/SIGINT, stdin EOF, or the parent process going away.

import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

const HOST = process.env.PDS_HOST || '127.0.0.1'
if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(HOST)) throw new Error(`invalid PDS_HOST: ${HOST}`)
const ADMIN_PASSWORD = process.env.PDS_ADMIN_PASSWORD || 'admin-pass'
const JWT_SECRET = process.env.PDS_JWT_SECRET || 'jwt-secret'

// Loggers read these at import time, so set them before the dynamic imports.
// Keep stdout reserved for the single ready line.
if (/^(true|t|1)$/i.test(process.env.LOG_ENABLED ?? '') && !process.env.LOG_DESTINATION) {
  process.env.LOG_DESTINATION = '/dev/stderr'
}

const log = (...args) => console.error('[pds/start]', ...args)

const parsePort = (name) => {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return 0
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    throw new Error(`invalid ${name}: ${raw}`)
  }
  return n
}

const freePort = () =>
  new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, HOST, () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })

// Express' app.listen(port) binds every interface; force HOST only.
const bindLoopback = (app) => {
  app.listen = function (port, ...rest) {
    return http.createServer(this).listen(port, HOST, ...rest)
  }
}

const t0 = process.hrtime.bigint()
let dataDir
let pds
let pdsStarted = false
let plc
let stopping = false

const cleanupDir = () => {
  if (dataDir) {
    try {
      fs.rmSync(dataDir, { recursive: true, force: true })
    } catch {}
  }
}

const shutdown = async (why, code = 0) => {
  if (stopping) return
  stopping = true
  log(`shutting down (${why})`)
  const hardExit = setTimeout(() => {
    cleanupDir()
    process.exit(code || 1)
  }, 5000)
  hardExit.unref()
  try {
    if (pds && !pdsStarted) pds.terminator = undefined // never listened
    await pds?.destroy()
  } catch (err) {
    log('pds destroy failed:', err)
  }
  try {
    await plc?.destroy()
  } catch (err) {
    log('plc destroy failed:', err)
  }
  cleanupDir()
  process.exit(code)
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => shutdown(sig))
}
process.on('uncaughtException', (err) => {
  log('uncaught exception:', err)
  shutdown('uncaughtException', 1)
})
process.on('unhandledRejection', (err) => {
  log('unhandled rejection:', err)
  shutdown('unhandledRejection', 1)
})
process.on('exit', cleanupDir)

// Exit when stdin reaches EOF (the spawning test process died or closed it),
// unless told otherwise. Only when stdin is a pipe, socket or terminal: with
// stdin = /dev/null or a file (e.g. CI without stdin, `cmd </dev/null &`)
// EOF is immediate and means nothing, so it is ignored.
const stdinIsLive = (() => {
  try {
    const st = fs.fstatSync(0)
    return st.isFIFO() || st.isSocket() || process.stdin.isTTY === true
  } catch {
    return false
  }
})()
if (stdinIsLive && !/^(1|true)$/i.test(process.env.PDS_KEEP_STDIN ?? '')) {
  process.stdin.on('data', () => {})
  process.stdin.on('end', () => shutdown('stdin closed'))
  process.stdin.on('error', () => shutdown('stdin error'))
  process.stdin.resume()
}
// Also exit if we get re-parented (parent died without closing our stdin).
const ppid0 = process.ppid
setInterval(() => {
  if (process.ppid !== ppid0) shutdown('parent exited')
}, 1000).unref()

try {
  const { PDS, envToCfg, envToSecrets } = await import('@atproto/pds')
  const { Secp256k1Keypair } = await import('@atproto/crypto')
  const plcServer = await import('@did-plc/server')
  const PlcServer = plcServer.PlcServer ?? plcServer.default.PlcServer
  const PlcDatabase = plcServer.Database ?? plcServer.default.Database

  // --- PLC directory: in-memory, in-process ---
  plc = PlcServer.create({ db: PlcDatabase.mock(), port: parsePort('PLC_PORT') })
  bindLoopback(plc.app)
  const plcHttp = await plc.start()
  const plcUrl = `http://${HOST}:${plcHttp.address().port}`

  // --- PDS ---
  const pdsPort = parsePort('PDS_PORT') || (await freePort())
  const pdsUrl = `http://${HOST}:${pdsPort}`
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'knotd-pds-'))
  const actorsDir = path.join(dataDir, 'data')
  fs.mkdirSync(actorsDir)

  const plcRotationKey = await Secp256k1Keypair.create({ exportable: true })
  const recoveryKey = await Secp256k1Keypair.create()

  const env = {
    devMode: true,
    port: pdsPort,
    hostname: 'localhost', // service DID did:web:localhost, handle domain .test
    dataDirectory: actorsDir,
    blobstoreDiskLocation: path.join(dataDir, 'blobs'),
    didPlcUrl: plcUrl,
    recoveryDidKey: recoveryKey.did(),
    plcRotationKeyK256PrivateKeyHex: Buffer.from(await plcRotationKey.export()).toString('hex'),
    adminPassword: ADMIN_PASSWORD,
    jwtSecret: JWT_SECRET,
    serviceHandleDomains: ['.test'],
    inviteRequired: false,
    disableSsrfProtection: true,
    crawlers: [], // no relay
    rateLimitsEnabled: false,
    serviceName: 'knotd test PDS',
    // no bskyAppView*/modService*/reportService*/email*/redis*/S3 settings:
    // those features stay off and nothing is contacted.
  }
  const cfg = envToCfg(env)
  // publicUrl would be http://localhost:PORT; use the exact loopback address
  // so the DID document's #atproto_pds endpoint is where we listen.
  cfg.service.publicUrl = pdsUrl
  // The PDS accepts plain http only for loopback URLs in its OAuth
  // metadata, which it checks when it is created: it is created with a
  // loopback URL, and HOST's URL is put in place afterwards, so that DID
  // documents of accounts created from then on name HOST's URL.
  const loopbackUrl = `http://127.0.0.1:${pdsPort}`
  cfg.service.publicUrl = loopbackUrl
  if (cfg.oauth && !cfg.entryway) cfg.oauth.issuer = loopbackUrl
  const secrets = envToSecrets(env)

  pds = await PDS.create(cfg, secrets)
  cfg.service.publicUrl = pdsUrl
  bindLoopback(pds.app)
  await pds.start()
  pdsStarted = true

  const readyMs = Number(process.hrtime.bigint() - t0) / 1e6
  process.stdout.write(
    JSON.stringify({
      pds: pdsUrl,
      plc: plcUrl,
      adminPassword: ADMIN_PASSWORD,
      dataDir,
      pid: process.pid,
      readyMs: Math.round(readyMs),
    }) + '\n',
  )
} catch (err) {
  log('failed to start:', err)
  await shutdown('startup failure', 1)
}
