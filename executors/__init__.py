"""Example executors. Being a package lets PyInstaller find exec_supervisor from this checkout."""
