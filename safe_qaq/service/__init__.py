"""The real-time fraud-alert service: stream a call in over a WebSocket, get the decision while it is going on.

``python -m safe_qaq.service --model MODEL`` (docs/service.md); the app is :func:`safe_qaq.service.app.create_app`.
"""
