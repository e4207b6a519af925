"""What hosted use needs: login and users, chat history in a database, rate limits, origins and
security headers."""
