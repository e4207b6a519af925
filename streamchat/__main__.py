"""`python -m streamchat`: the console front end."""

from streamchat.faces.cli import main

raise SystemExit(main())
