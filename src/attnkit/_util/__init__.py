"""Helpers every floor of attnkit may use: files, validators, environment. Imports nothing
from the rest of the package."""
