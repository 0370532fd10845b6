"""The schema: numbered migrations that `heartline migrate` applies in order.

Shipped inside the wheel as the package `heartline.sql` (see setup.py); nothing here is imported but the
folder itself.
"""
