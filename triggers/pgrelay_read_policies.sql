-- Publish pgrelay.read_policies to the relay itself, so an edit takes effect without a restart.
CREATE OR REPLACE TRIGGER pgrelay_notify
    AFTER INSERT OR UPDATE OR DELETE ON pgrelay.read_policies
    FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change();

-- And pgrelay.channel_policies (private channels), for the same reason.
CREATE OR REPLACE TRIGGER pgrelay_notify
    AFTER INSERT OR UPDATE OR DELETE ON pgrelay.channel_policies
    FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change();
