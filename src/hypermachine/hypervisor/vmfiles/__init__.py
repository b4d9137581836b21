"""A VM's folders on the host: where its files live, who owns them, how the server writes them."""
