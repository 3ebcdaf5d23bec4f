// A private aedes broker for mqlink's interoperability tests.
// Usage: node broker.mjs PORT [USER PASSWORD]
// Prints "listening PORT" once the listener is bound; exits when stdin closes.
import net from 'node:net'
import { Aedes } from 'aedes'

const [port, user, password] = process.argv.slice(2)
const aedes = await Aedes.createBroker()
if (user !== undefined) {
  aedes.authenticate = (client, u, p, done) => {
    const ok = u === user && p !== undefined && p.toString() === password
    if (ok) return done(null, true)
    const err = new Error('bad user name or password')
    err.returnCode = 4
    done(err, false)
  }
}
const server = net.createServer(aedes.handle)
server.on('error', (e) => { console.error(`listen error: ${e.message}`); process.exit(3) })
server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${port}`))
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
