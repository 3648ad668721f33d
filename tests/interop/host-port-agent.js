// The Azure Node SDKs' HTTP transports hand `host:port` to https.request as the host name
// (dps-wire.md section 1): this agent moves the port where Node expects it, and counts the
// TLS connections it opens and how many of them resumed an earlier session.
'use strict';

const https = require('node:https');

class HostPortAgent extends https.Agent {
  constructor(options) {
    super(options);
    this.tlsStats = { connections: 0, resumed: 0 };
  }

  createConnection(options, cb) {
    const o = Object.assign({}, options);
    const m = /^(.*):(\d+)$/.exec(o.host || '');
    if (m) {
      o.host = m[1];
      o.port = Number(m[2]);
      o.servername = m[1];
    }
    const socket = super.createConnection(o, cb);
    this.tlsStats.connections++;
    socket.once('secureConnect', () => {
      if (socket.isSessionReused()) this.tlsStats.resumed++;
    });
    return socket;
  }
}

module.exports = { HostPortAgent };
