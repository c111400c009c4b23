"""Presentation: console tables for every command (`tables`), the `trimkit bench` report (`bench`), the
`trimkit show` figure (`show`) and headless matplotlib (`plots`). Nothing here measures anything."""
