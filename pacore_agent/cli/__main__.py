"""``python -m pacore_agent.cli``: the ``pacore`` command."""

from pacore_agent.cli import main

main()
