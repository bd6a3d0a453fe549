"""The Python API's machinery: Display, AsyncDisplay, a display leased from a pool, and the
pytest plugin's child supervisor."""
