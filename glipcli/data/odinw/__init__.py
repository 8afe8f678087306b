"""ODinW (Object Detection in the Wild): the suites' facts from the official configs (`registry`),
where each dataset's files lie on disk (`layout`), and fetching the archives from the hub (`download`)."""
