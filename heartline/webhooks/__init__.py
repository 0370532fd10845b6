"""Webhooks after the Standard Webhooks spec: the event catalogue, endpoint secrets, the SSRF guard on
targets, the retry schedule and one signed attempt, and the SQL that queues and records deliveries.

The worker sends (worker/webhooks.py), the admin manages endpoints and resends (admin/views/webhooks.py);
docs/webhooks.md is the user's page.
"""
