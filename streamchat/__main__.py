"""`python -m streamchat`: the console front end."""

from streamchat.cli import main

raise SystemExit(main())
