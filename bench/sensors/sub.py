#!/usr/bin/env python3
"""Record affectgate/# from the broker on 127.0.0.1:PORT into OUT (state payloads elided)."""
import sys

import paho.mqtt.client as mqtt

port, out = int(sys.argv[1]), open(sys.argv[2], "w", buffering=1)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("affectgate/#", 1)


def on_message(cl, u, m):
    body = "state" if m.topic.endswith("/state") else m.payload[:300].decode(errors="replace")
    out.write(f"{m.topic} {body}\n")


c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_forever()
