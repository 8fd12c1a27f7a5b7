"""The bottom layer: settings, the hotel profile, the database and the provisioned model files.

Imports nothing else of the project; every other package may import it.
"""
