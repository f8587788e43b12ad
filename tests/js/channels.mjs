// The reference app's channels (docs/app.md, client patterns), built exactly as the app writes
// them: same channel names, same binding objects, same order. Each takes the callbacks
// (recorder `.cb`s) so tests can see which binding fired.

/** Pattern 1 (seed: useSessionManager). */
export function buttonSessions(client, rec) {
  // Exactly as the seed writes it.
  return client
    .channel('button-sessions')
    .on(
      'postgres_changes',
      {
        event: '*',
        schema: 'public',
        table: 'button_holds',
      },
      rec.cb,
    );
}

/** Pattern 3 (seed: usePolls). */
export function pollsChanges(client, pollsRec, votesRec) {
  return client
    .channel('polls-changes')
    .on(
      'postgres_changes',
      {
        event: '*',
        schema: 'public',
        table: 'polls',
      },
      pollsRec.cb,
    )
    .on(
      'postgres_changes',
      {
        event: '*',
        schema: 'public',
        table: 'user_votes',
      },
      votesRec.cb,
    );
}

/** Pattern 4 (seed: useStatistics). */
export function statisticsUpdates(client, votesRec, pollsRec, profilesRec) {
  return client
    .channel('statistics-updates')
    .on(
      'postgres_changes',
      {
        event: 'INSERT',
        schema: 'public',
        table: 'user_votes',
      },
      votesRec.cb,
    )
    .on(
      'postgres_changes',
      {
        event: 'INSERT',
        schema: 'public',
        table: 'polls',
      },
      pollsRec.cb,
    )
    .on(
      'postgres_changes',
      {
        event: 'INSERT',
        schema: 'public',
        table: 'profiles',
      },
      profilesRec.cb,
    );
}

/** Pattern 5 (seed: createEfficientSubscription). */
export function appUpdates(client, votesRec, pollsRec) {
  return client
    .channel('app-updates')
    .on(
      'postgres_changes',
      {
        event: 'INSERT',
        schema: 'public',
        table: 'user_votes',
      },
      votesRec.cb,
    )
    .on(
      'postgres_changes',
      {
        event: 'UPDATE',
        schema: 'public',
        table: 'polls',
        filter: 'status=eq.active',
      },
      pollsRec.cb,
    );
}

/**
 * Pattern 6 (seed: useRealtimeConnection): a `system` listener; `table` adds a `*`
 * postgres_changes binding (the relay sends its system message only for joins with bindings).
 */
export function connectionMonitor(client, systemRec, { table, changesRec } = {}) {
  let channel = client.channel('connection-monitor').on('system', {}, systemRec.cb);
  if (table) {
    channel = channel.on(
      'postgres_changes',
      { event: '*', schema: 'public', table },
      changesRec ? changesRec.cb : () => {},
    );
  }
  return channel;
}
