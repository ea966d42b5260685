"""Listeners that deliver requests to the ASGI API app with a verified client identity.

- `tcp.serve_tcp`: HTTP/1.1 over TLS (uvicorn + httptools), the hot path and kubectl's path.
- `h3.serve_h3`: HTTP/3 over QUIC (aioquic) on the same port number, UDP.
- `h3client.H3Client`: the matching HTTP/3 client for tests and the CLI.
- `asgi`: the scope contract both listeners keep (`scope["hypermesh.identity"]`).

Nothing is imported here, so `import hypermesh.transport.h3client` does not pull in uvicorn.
"""
