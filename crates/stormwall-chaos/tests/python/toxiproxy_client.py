"""Drives the stormwall chaos proxy with Toxiproxy's official Python client, unmodified.

Usage: python toxiproxy_client.py <api host> <api port> <echo upstream host:port>
       <second echo upstream host:port>
Prints "ok" when every step behaved as it does against Toxiproxy.
"""
import socket
import sys

from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer


def echo(listen, message=b"ping"):
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = s.recv(64)
            if not chunk:
                break
            got += chunk
        return got


def main():
    host, port, upstream, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    server = Toxiproxy()
    server.update_api_consumer(host, port)
    assert server.running(), "API not reachable"
    assert b"version" in server.version()

    proxy = server.create(upstream=upstream, name="py", listen="127.0.0.1:0")
    assert proxy.enabled
    assert "py" in server.proxies()
    assert echo(proxy.listen) == b"ping"

    proxy.add_toxic(type="latency", attributes={"latency": 100})
    toxics = proxy.toxics()
    assert list(toxics) == ["latency_downstream"], toxics
    assert toxics["latency_downstream"].attributes["latency"] == 100
    assert toxics["latency_downstream"].stream == "downstream"
    proxy.destroy_toxic("latency_downstream")
    assert proxy.toxics() == {}

    proxy.disable()
    assert not server.get_proxy("py").enabled
    proxy.enable()
    assert server.get_proxy("py").enabled
    with proxy.down():
        assert not server.get_proxy("py").enabled
    assert server.get_proxy("py").enabled
    assert echo(server.get_proxy("py").listen) == b"ping"

    # reset_peer with timeout 0 (Toxiproxy's reset_peer.go): the connect succeeds, the
    # first data starts the clock and is dropped, then the connection is reset.
    proxy.add_toxic(type="reset_peer", stream="upstream", attributes={"timeout": 0})
    h, p = proxy.listen.rsplit(":", 1)
    for i in range(20):
        with socket.create_connection((h, int(p)), timeout=5) as s:
            s.sendall(b"ping")
            try:
                got = s.recv(64)
            except ConnectionResetError:
                continue
            raise AssertionError("run %d: expected ECONNRESET, got %r" % (i, got))
    proxy.destroy_toxic("reset_peer_upstream")

    # Changing the upstream of an enabled proxy (the client's own API consumer, as
    # Toxiproxy's update): 200, still enabled on the same port, forwarding to the new one.
    for i in range(20):
        target = other if i % 2 == 0 else upstream
        APIConsumer.post("/proxies/py", json={"upstream": target})
        moved = server.get_proxy("py")
        assert moved.enabled and moved.upstream == target, vars(moved)
        assert moved.listen == proxy.listen, (moved.listen, proxy.listen)
        assert echo(moved.listen) == b"ping"

    proxy.add_toxic(type="timeout", name="hold", attributes={"timeout": 0})
    assert server.reset()
    assert proxy.toxics() == {}

    server.populate([{"name": "py2", "upstream": upstream, "listen": "127.0.0.1:0"}])
    assert sorted(server.proxies()) == ["py", "py2"]
    server.destroy_all()
    assert server.proxies() == {}
    print("ok")


if __name__ == "__main__":
    main()
