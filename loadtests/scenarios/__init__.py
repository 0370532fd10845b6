"""Locust scenarios; loadtests/locustfile.py imports the users from here."""
