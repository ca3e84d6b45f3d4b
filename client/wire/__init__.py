"""The wire vocabulary: what client and broker say to each other and to MySQL.

Both sides import it; it imports neither (only pymysql's constants and
msgpack). `protocol`: the request and reply frames, ops, statuses. `zmtp`:
ZeroMQ's framing and handshake, sans I/O. `mysql`: MySQL packet framing.
`statement`: what a statement may do (read, write, session state), for bytes
and str. The exception tree and its wire form are `client.errors`.
"""
